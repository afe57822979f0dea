"""Permutation alignment of two networks by weight matching (Ainsworth, Hayase & Srinivasa, 2023, "Git Re-Basin").

Hidden units can be permuted without changing the function a network computes: permuting the output
channels of a layer, the entries of everything that acts channel-wise on them (BatchNorm weights, biases,
running statistics) and the input channels of every layer that reads them, leaves the logits as they
were. Two independently trained networks ŵ1, ŵ2 may lie in one basin once ŵ2 is permuted into line with
ŵ1; the segment (1 − t) ŵ1 + t π(ŵ2) is the *aligned segment*, the natural rival of the paper's curves
(Garipov et al. 2018, Sec. 3): is the barrier of the plain segment still there after alignment?

The three steps, one module each: :mod:`~modeconn.align.trace` reads which weights share a permutation off
the model's traced graph (:func:`permutation_spec`), :mod:`~modeconn.align.matching` finds the
permutations by weight matching (:func:`weight_matching`; :func:`align_endpoints` for a curve's two
endpoints) and :mod:`~modeconn.align.permute` applies them (:func:`apply_permutation`).

    >>> spec = permutation_spec(model, torch.zeros(2, 3, 32, 32))
    >>> perms = weight_matching(spec, state_1, state_2)
    >>> aligned_2 = apply_permutation(spec, state_2, perms)  # the same function as state_2
"""

from .matching import align_endpoints, weight_matching
from .permute import Axis, PermutationSpec, apply_permutation, random_permutations
from .trace import permutation_spec

__all__ = [
    "Axis",
    "PermutationSpec",
    "align_endpoints",
    "apply_permutation",
    "permutation_spec",
    "random_permutations",
    "weight_matching",
]
