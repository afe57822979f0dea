"""BatchNorm recalibration along a curve (paper, Sec. 3; DESIGN decision 2).

Running statistics from training belong to no point of the curve. Before any
evaluation at t, reset them and recompute them with one pass over the
(un-augmented) training data at φ_θ(t), as an exact cumulative average over
batches — what ``torch.optim.swa_utils.update_bn`` does for a plain model.
Here the forward pass is any callable, so a curve point (run through
``functional_call``) is recalibrated in place of its template.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .runtime import CPU, Runtime


def bn_modules(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_bn(module: nn.Module) -> bool:
    return bool(bn_modules(module))


@torch.no_grad()
def recalibrate(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    runtime: Runtime = CPU,
) -> bool:
    """Recompute the running statistics of every BatchNorm in ``module``.

    ``forward(x)`` runs the network (default: ``module(x)``); it must go
    through ``module``'s BN layers. Returns False (and does nothing) when the
    module has no BatchNorm. The module's train/eval mode is restored.
    """
    bns = bn_modules(module)
    if not bns:
        return False
    forward = forward or module
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches
    was_training = module.training
    module.train()
    for x, _ in batches:
        with runtime.autocast():
            forward(x)
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    module.train(was_training)
    return True
