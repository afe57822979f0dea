"""Weight matching: the permutations that bring one network into line with another.

Ainsworth, Hayase & Srinivasa 2023 ("Git Re-Basin"), Algorithm 1: maximise Σ_ℓ ⟨W_ℓ^(1), π(W_ℓ^(2))⟩
over the permutations by coordinate descent: visit the permutations in random order; for one permutation
P, with the others fixed, the objective is linear in P, Σ_ij C_ij P_ij with C = Σ over every parameter
axis in P's space of W^(1) · (W^(2) with its other axes permuted)^T, solved exactly by
``scipy.optimize.linear_sum_assignment``; stop after a sweep in which no permutation improves the objective.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from modeconn.errors import ModeconnError

from .permute import PermutationSpec, apply_permutation, permute_units
from .trace import permutation_spec

__all__ = ["align_endpoints", "weight_matching"]


def _similarity(spec: PermutationSpec, group: str, a: dict, b: dict, perms: dict[str, torch.Tensor]) -> torch.Tensor:
    """C [n, n] with C_ij = Σ over the parameter axes of ``group`` of ⟨unit i of a, unit j of b⟩, b's other axes
    permuted by ``perms`` (the objective of weight matching is Σ_i C_{i, P(i)} with the others fixed)."""
    n = spec.sizes[group]
    c = torch.zeros(n, n, dtype=torch.float64)
    for name in spec.parameters:
        for axis in spec.axes.get(name, ()):
            if axis.group != group:
                continue
            wb = b[name]
            for other in spec.axes[name]:
                if other is not axis:
                    wb = permute_units(wb, other, perms[other.group])
            wa = a[name].unflatten(axis.dim, (n, axis.mult)).movedim(axis.dim, 0).reshape(n, -1)
            wb = wb.unflatten(axis.dim, (n, axis.mult)).movedim(axis.dim, 0).reshape(n, -1)
            c += wa @ wb.T
    return c


def weight_matching(
    spec: PermutationSpec,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    seed: int = 0,
    max_sweeps: int = 100,
) -> dict[str, torch.Tensor]:
    """Permutations ``perms`` such that ``apply_permutation(spec, state_b, perms)`` is close to ``state_a``.

    Ainsworth et al. 2023, Algorithm 1: coordinate descent over the groups in random order (seeded), each
    step an exact linear assignment, until a sweep improves nothing (at most ``max_sweeps``). One departure:
    the first sweep goes in graph order (input to logits), so that each group is first matched when the
    group feeding it already is; from the identity in random order, coordinate descent can settle in a
    local optimum even for an exactly permuted copy (a wide classifier whose neighbours are both still
    wrong). Only the parameters of ``spec`` are compared, in float64 on the CPU.
    """
    missing = [n for n in spec.parameters if n not in state_a or n not in state_b]
    if missing:
        raise ModeconnError(f"align: weight matching needs parameter {missing[0]!r} in both weight dicts")
    a = {n: state_a[n].detach().double().cpu() for n in spec.parameters}
    b = {n: state_b[n].detach().double().cpu() for n in spec.parameters}
    perms = {g: torch.arange(n) for g, n in spec.sizes.items()}
    groups = list(spec.sizes)
    g = torch.Generator().manual_seed(seed)
    for sweep in range(max_sweeps):
        improved = False
        order = range(len(groups)) if sweep == 0 else torch.randperm(len(groups), generator=g).tolist()
        for i in order:
            group = groups[i]
            c = _similarity(spec, group, a, b, perms)
            rows, cols = linear_sum_assignment(c.numpy(), maximize=True)
            new = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)
            idx = torch.arange(len(new))
            old_score, new_score = c[idx, perms[group]].sum().item(), c[idx, new].sum().item()
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                perms[group] = new
                improved = True
        if not improved:
            break
    return perms


def align_endpoints(
    template: nn.Module,
    w1: dict[str, torch.Tensor],
    w2: dict[str, torch.Tensor],
    example_input: torch.Tensor,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    """ŵ2 permuted into line with ŵ1 by weight matching: (π(ŵ2), the permutations, numbers about them).

    ``w1``, ``w2`` are parameter dicts of ``template`` (e.g. a curve's endpoints); the numbers are the
    distances ‖ŵ2 − ŵ1‖ and ‖π(ŵ2) − ŵ1‖, the number of permutation groups and the fraction of hidden units
    that moved. The aligned segment is (1 − t) ŵ1 + t π(ŵ2), the same network as ŵ2 at t = 1.
    """
    spec = permutation_spec(template, example_input)
    perms = weight_matching(spec, w1, w2, seed=seed)
    aligned = apply_permutation(spec, w2, perms)
    names = list(spec.parameters)

    def dist(a: dict, b: dict) -> float:
        return float(
            sum(((a[n].detach().double().cpu() - b[n].detach().double().cpu()) ** 2).sum() for n in names) ** 0.5
        )

    units = sum(spec.sizes.values())
    moved = sum(int((p != torch.arange(p.numel())).sum()) for p in perms.values())
    info = {
        "distance_before": dist(w1, w2),
        "distance_after": dist(w1, aligned),
        "permutation_groups": len(spec.sizes),
        "hidden_units": units,
        "moved_fraction": moved / units if units else 0.0,
    }
    return aligned, perms, info
