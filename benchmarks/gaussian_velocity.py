"""How accurate the trained velocity is at early, middle and late times, on data whose velocity is known in
closed form: a correlated 2-D Gaussian N(m, Σ) (METHOD.md §8). Prints the relative L2 error of ∇Φ on samples of ρ_t.

    python benchmarks/gaussian_velocity.py loss.snr_floor=0.05      # any config overrides; ~1 minute on one core
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from conftest import GaussianTruth  # noqa: E402

from vpfb.config import load_config  # noqa: E402
from vpfb.fit import fit  # noqa: E402
from vpfb.paths import LinearPath  # noqa: E402

MEAN, COV = torch.tensor([1.0, -0.5]), torch.tensor([[0.25, 0.8], [0.8, 4.0]])
TIMES = (0.1, 0.5, 0.9)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    overrides = ["model.hidden=128", "model.depth=2", "train.steps=3000", "train.lr=0.003", "train.batch_size=512",
                 *sys.argv[1:]]
    cfg = load_config(None, overrides)
    model = fit(cfg, points=GaussianTruth(LinearPath(), MEAN, cov=COV).sample_data(50_000), progress_bar=False)
    st = model.standardizer  # the model trains on standardised data: compare there
    truth = GaussianTruth(model.path, (MEAN - st.mean) / st.std, cov=COV / torch.outer(st.std, st.std))
    errors = []
    for t in TIMES:
        z = truth.sample_marginal(4000, t)
        v_model = model.velocity(st.inverse(z), t) / st.std
        v_true = truth.velocity(z, torch.full((len(z),), t))
        errors.append(((v_model - v_true).square().sum(1).mean() / v_true.square().sum(1).mean()).sqrt().item())
    print(" ".join(sys.argv[1:]) or "defaults", "| relative velocity error at t = " +
          " / ".join(f"{t}" for t in TIMES) + ": " + " / ".join(f"{e:.3f}" for e in errors))


if __name__ == "__main__":
    main()
