"""Stochastic Weight Averaging of a run's snapshots (Izmailov et al. 2018, "Averaging Weights Leads to
Wider Optima and Better Generalization", Algorithm 1).

FGE's snapshots lie close together in one basin (paper, Sec. 5: ≈7 apart in weight space against ≈40 for
independent networks); their average is one network, often as good as their ensemble at the cost of one
forward pass. The average is an equal-weight running mean, updated at each snapshot,

    w_SWA ← (n · w_SWA + w) / (n + 1),   n ← n + 1,

so a run never keeps more than one extra copy of the weights. BatchNorm statistics belong to no snapshot
(nor to their average): before evaluating w_SWA, recompute them with one pass over the un-augmented
training data (Izmailov et al., Sec. 3.2; :func:`modeconn.bn.recalibrate`, as ``swa_utils.update_bn``).
Buffers that are not BN statistics (e.g. ``num_batches_tracked``) are the last snapshot's.

In a data-parallel run on CUDA the training model's BatchNorm layers are SyncBatchNorm, whose training-mode
pass is a collective; the averaged copy is evaluated on rank 0 alone, so its layers are turned back into
plain BatchNorm first (their statistics are recomputed anyway).

:func:`swa_summary` gives the mean scores of several runs' averages (FGE's runs, :mod:`modeconn.fge`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import calibration, ensemble
from .bn import recalibrate
from .runtime import CPU, Runtime
from .train import Batches


class WeightAverage:
    """The running mean of the parameters of the snapshots seen so far (float32, on the CPU).

    ``update(model)`` adds the model's current parameters; ``state_dict()`` / ``load_state_dict()`` round-trip
    the mean and the count (for resuming a run after preemption).
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = {name: p.detach().float().cpu() for name, p in model.named_parameters()}
        if self.n == 0:
            self.mean = {name: w.clone() for name, w in params.items()}
        else:
            if params.keys() != self.mean.keys():
                raise ValueError("WeightAverage.update: the model's parameters are not those averaged so far")
            for name, w in params.items():
                self.mean[name] += (w - self.mean[name]) / (self.n + 1)
        self.n += 1

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": dict(self.mean)}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        self.mean = {name: w.float().cpu().clone() for name, w in state["mean"].items()}


class _BatchNormXd(nn.modules.batchnorm._BatchNorm):
    """BatchNorm of any input rank: what a SyncBatchNorm (which does not know its rank) becomes again."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.SyncBatchNorm`` replaced by an equivalent single-process BatchNorm (the
    inverse of ``nn.SyncBatchNorm.convert_sync_batchnorm``: same affine weights and running statistics)."""
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        out = _BatchNormXd(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out


@torch.no_grad()
def averaged_model(model: nn.Module, average: WeightAverage, bn_batches: Batches, runtime: Runtime = CPU) -> nn.Module:
    """A copy of ``model`` with the averaged parameters and BatchNorm recalibrated on ``bn_batches``, in eval mode.

    ``model`` itself is left as it is (its weights, buffers and mode).
    """
    if average.n == 0:
        raise ValueError("no snapshot has been averaged: a run needs at least one snapshot for SWA")
    swa = revert_sync_batchnorm(copy.deepcopy(model))
    for name, p in swa.named_parameters():
        p.copy_(average.mean[name])  # copy_ keeps p's device, dtype and memory format
    recalibrate(swa, bn_batches, runtime=runtime)
    return swa.eval()


def swa_summary(records: list[dict], labels: torch.Tensor, val_labels: torch.Tensor | None = None) -> dict:
    """Over the runs' SWA networks (records with ``swa``): mean test accuracy, NLL and ECE (and validation
    accuracy and NLL); empty when no run has one."""
    swas = [rec["swa"] for rec in records if rec.get("swa") is not None]
    if not swas:
        return {}
    out = {
        "swa_accuracy": sum(ensemble.accuracy(s["logprobs"], labels) for s in swas) / len(swas),
        "swa_nll": sum(ensemble.nll(s["logprobs"], labels) for s in swas) / len(swas),
        "swa_ece": sum(calibration.ece(s["logprobs"], labels) for s in swas) / len(swas),
    }
    if val_labels is not None and all(s["val_logprobs"] is not None for s in swas):
        out["swa_val_accuracy"] = sum(ensemble.accuracy(s["val_logprobs"], val_labels) for s in swas) / len(swas)
        out["swa_val_nll"] = sum(ensemble.nll(s["val_logprobs"], val_labels) for s in swas) / len(swas)
    return out
