"""Weight dicts as vectors of R^|net| (the space in which the paper's curves, planes and distances live).

A weight dict maps parameter names to tensors (a state dict's parameters, a
point φ_θ(t) of a curve). :func:`flat` lays it out as one vector in dict
order, :func:`unflatten` puts a vector back into that layout, and
:func:`sq_norm` is ‖w‖², the paper's L2 regulariser without its 0.5·wd.
"""

from __future__ import annotations

import torch

from .errors import ModeconnError


def flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """All tensors of a weight dict as one flat float32 vector [D] (in dict order), detached."""
    return torch.cat([w.detach().float().reshape(-1) for w in weights.values()])


def unflatten(w: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The flat vector ``w`` [D] as a weight dict with the names, shapes, dtypes and devices of ``like``."""
    total = sum(t.numel() for t in like.values())
    if total != w.numel():
        raise ModeconnError(f"a point of {w.numel()} weights does not fit a network of {total}")
    out, i = {}, 0
    for name, t in like.items():
        n = t.numel()
        out[name] = w[i : i + n].reshape(t.shape).to(dtype=t.dtype, device=t.device)
        i += n
    return out


def sq_norm(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """‖w‖² = Σ over every tensor of the sum of its squared entries, in float32 (differentiable)."""
    return sum((w.float() ** 2).sum() for w in weights.values())
