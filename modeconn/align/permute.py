"""Permutation groups of a network and applying them to its weights.

A :class:`PermutationSpec` names each group of hidden units that move together and every axis of the state
dict that a group permutes (:mod:`~modeconn.align.trace` reads it off the model's graph). Permuting every
axis of a group by the same permutation leaves the function the network computes as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Axis", "PermutationSpec", "apply_permutation", "permute_units", "random_permutations"]


@dataclass(frozen=True)
class Axis:
    """Dimension ``dim`` of tensor ``name`` is permuted by ``group``, in blocks of ``mult`` consecutive entries
    (a Linear reading a flattened (C, H, W) map has ``mult = H·W``)."""

    name: str
    dim: int
    group: str
    mult: int = 1


@dataclass
class PermutationSpec:
    """The permutation groups of a network: ``sizes[g]`` units each, and the axes of the state dict they move.

    ``parameters`` names the entries that weight matching compares (the model's parameters; buffers such as
    BatchNorm running statistics are permuted with them but not compared).
    """

    sizes: dict[str, int] = field(default_factory=dict)
    axes: dict[str, list[Axis]] = field(default_factory=dict)  # tensor name -> its permuted axes
    parameters: tuple[str, ...] = ()

    def group_axes(self, group: str) -> list[Axis]:
        return [a for axes in self.axes.values() for a in axes if a.group == group]


def permute_units(x: torch.Tensor, axis: Axis, perm: torch.Tensor) -> torch.Tensor:
    """``x`` with the units of ``axis`` reordered: unit i of the result is unit perm[i] of ``x``."""
    n = perm.numel()
    blocks = x.unflatten(axis.dim, (n, axis.mult))  # (..., n, mult, ...)
    return blocks.index_select(axis.dim, perm.to(x.device)).flatten(axis.dim, axis.dim + 1)


def apply_permutation(
    spec: PermutationSpec, state: dict[str, torch.Tensor], perms: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` (parameters and/or buffers) with every axis of ``spec`` permuted by ``perms[group]`` (new dict).

    ``perms[g][i]`` is the unit of ``state`` that goes to position i; the result computes the same function.
    Entries of ``state`` that ``spec`` does not name (or groups missing from ``perms``) are kept as they are.
    """
    out = {}
    for name, x in state.items():
        for axis in spec.axes.get(name, ()):
            if axis.group in perms:
                x = permute_units(x, axis, perms[axis.group])
        out[name] = x
    return out


def random_permutations(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A uniformly random permutation per group (from its own seeded generator)."""
    g = torch.Generator().manual_seed(seed)
    return {group: torch.randperm(n, generator=g) for group, n in spec.sizes.items()}
