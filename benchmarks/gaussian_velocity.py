"""How accurate the trained velocity is at early, middle and late times, on data whose velocity is known in
closed form: a correlated 2-D Gaussian N(m, Σ) (docs/method.md §8), fitted as tests/test_training.py fits it. Prints the
relative L2 error of ∇Φ on samples of ρ_t.

    python benchmarks/gaussian_velocity.py loss.snr_floor=0.05      # any config overrides; ~1 minute on one core
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_training import fit_on_gaussian, relative_velocity_error  # noqa: E402

TIMES = (0.1, 0.5, 0.9)


def main() -> None:
    torch.set_num_threads(1)
    model, truth = fit_on_gaussian(sys.argv[1:])
    errors = [relative_velocity_error(model, truth, t) for t in TIMES]
    print(
        " ".join(sys.argv[1:]) or "defaults",
        "| relative velocity error at t = "
        + " / ".join(f"{t}" for t in TIMES)
        + ": "
        + " / ".join(f"{e:.3f}" for e in errors),
    )


if __name__ == "__main__":
    main()
