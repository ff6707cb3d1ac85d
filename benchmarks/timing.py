"""Step times measured so that a busy, shared machine slows every method alike."""

from __future__ import annotations

import statistics
from typing import Callable

from vpfb.training.trainer import TrainResult


def interleaved_step_times(runs: dict[str, Callable[[], TrainResult]], rounds: int) -> dict[str, float]:
    """Seconds per training step of each method: every round calls every method's short training run once, in
    turn, and each method keeps the median over the rounds."""
    times: dict[str, list[float]] = {method: [] for method in runs}
    for _ in range(rounds):
        for method, run in runs.items():
            result = run()
            times[method].append(result.seconds / result.steps)
    return {method: statistics.median(t) for method, t in times.items()}
