"""The runtime's defaults measured against the other choice in the same rounds: the memory layout
(channels_last or contiguous) and the thread count (torch's default or one)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .figures import Figure, paired_figure


def one_thread(fn: Callable[[], float]) -> float:
    """``fn()`` with torch on one intra-op thread (the thread count restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def layout_figures(runs: dict[str, list[float]], channels_last: bool, rounds: int) -> dict[str, Figure]:
    """channels_last against the contiguous (NCHW) layout, paired per round: training images/s and BN
    recalibration time, whichever of the two the runtime uses."""
    own, other = (runs["train_loader"], runs["bn_recalibration"]), (runs["train_other_layout"], runs["bn_other_layout"])
    (nhwc_train, nhwc_bn), (nchw_train, nchw_bn) = (own, other) if channels_last else (other, own)
    return {
        "layout_train": paired_figure(
            "training speed, channels_last / contiguous (> 1: channels_last faster)",
            rounds,
            nhwc_train,
            nchw_train,
        ),
        "layout_bn": paired_figure(
            "BN recalibration speed, channels_last / contiguous",
            rounds,
            nchw_bn,
            nhwc_bn,
        ),
    }
