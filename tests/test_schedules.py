"""LR schedules against the paper's formulas at key points."""

import math

import pytest

from modeconn import schedules


@pytest.mark.parametrize(
    "progress, expected",
    [
        (0.0, 0.1),
        (0.25, 0.1),
        (0.5, 0.1),
        (0.7, 0.1 * (1 - 0.99 * 0.5)),  # halfway through the decay
        (0.9, 0.001),
        (0.95, 0.001),
        (1.0, 0.001),
    ],
)
def test_standard_schedule(progress, expected):
    assert schedules.standard_lr(progress, 0.1) == pytest.approx(expected)


def test_standard_schedule_is_monotone_and_continuous():
    values = [schedules.standard_lr(i / 1000, 1.0) for i in range(1001)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    assert max(abs(b - a) for a, b in zip(values, values[1:])) < 0.003


@pytest.mark.parametrize("cycle", [2, 4, 10, 100])
def test_fge_lr_start_quarter_middle_end(cycle):
    lr_1, lr_2 = 0.05, 0.0005
    # t(i) = i/c in the first cycle: near lr_1 at the start, lr_2 in the middle, lr_1 at the end.
    assert schedules.fge_lr(cycle // 2, cycle, lr_1, lr_2) == pytest.approx(lr_2)
    assert schedules.fge_lr(cycle, cycle, lr_1, lr_2) == pytest.approx(lr_1)
    assert schedules.fge_lr(1, cycle, lr_1, lr_2) == pytest.approx((1 - 2 / cycle) * lr_1 + 2 / cycle * lr_2)
    if cycle % 4 == 0:
        mid = (lr_1 + lr_2) / 2
        assert schedules.fge_lr(cycle // 4, cycle, lr_1, lr_2) == pytest.approx(mid)
        assert schedules.fge_lr(3 * cycle // 4, cycle, lr_1, lr_2) == pytest.approx(mid)
    # Periodic with period c.
    for i in range(1, cycle + 1):
        assert schedules.fge_lr(i + 3 * cycle, cycle, lr_1, lr_2) == pytest.approx(
            schedules.fge_lr(i, cycle, lr_1, lr_2)
        )


@pytest.mark.parametrize("cycle, iters", [(2, 10), (4, 12), (6, 30), (100, 400)])
def test_fge_snapshots_at_lr_minima(cycle, iters):
    snaps = [i for i in range(1, iters + 1) if schedules.fge_is_snapshot(i, cycle)]
    assert snaps == list(range(cycle // 2, iters + 1, cycle))
    lrs = [schedules.fge_lr(i, cycle, 1.0, 0.01) for i in range(1, iters + 1)]
    for i in snaps:
        assert lrs[i - 1] == pytest.approx(min(lrs))


def test_sse_cosine_at_cycle_starts_and_ends():
    total, cycles, lr = 80, 4, 0.2
    period = 20
    for k in range(cycles):
        start = k * period + 1
        assert schedules.sse_lr(start, total, cycles, lr) == pytest.approx(lr)  # restart
        end = (k + 1) * period
        assert schedules.sse_lr(end, total, cycles, lr) == pytest.approx(lr / 2 * (math.cos(math.pi * 19 / 20) + 1))
        assert schedules.sse_lr(k * period + 11, total, cycles, lr) == pytest.approx(lr / 2)  # cos(π/2) = 0
    snaps = [i for i in range(1, total + 1) if schedules.sse_is_snapshot(i, total, cycles)]
    assert snaps == [20, 40, 60, 80]


def test_sse_uneven_cycles_ceil_and_final_snapshot():
    # T/M not an integer: period ⌈T/M⌉, and the last iteration always yields a snapshot.
    snaps = [i for i in range(1, 11) if schedules.sse_is_snapshot(i, 10, 3)]
    assert snaps == [4, 8, 10]
