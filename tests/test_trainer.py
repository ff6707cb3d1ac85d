import csv

import pytest
import torch

from vpfb.config import TrainConfig
from vpfb.losses import DeepRitzLoss, LossOutput
from vpfb.parameterisation import EnergyPotential
from vpfb.paths import LinearPath
from vpfb.potentials import MLPPotential
from vpfb.training import train


def setup(seed=0):
    torch.manual_seed(seed)
    path = LinearPath()
    return EnergyPotential(MLPPotential(2, hidden=16, depth=2), path), DeepRitzLoss(path), torch.randn(500, 2)


def test_seeded_runs_are_identical_and_log_to_csv(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=32, log_every=10)
    runs = []
    for name in ("a", "b"):
        potential, loss, data = setup()
        result = train(potential, loss, data, cfg, metrics_csv=tmp_path / f"{name}.csv", progress_bar=False)
        runs.append(torch.cat([p.flatten() for p in result.ema.parameters()]))
        assert result.steps == 30 and [row["step"] for row in result.history] == [10, 20, 30]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert [int(r["step"]) for r in rows] == [10, 20, 30] and {"loss", "residual", "lr"} <= set(rows[0])


def test_ema_differs_from_raw_weights_and_training_lowers_the_residual():
    potential, loss, data = setup()
    cfg = TrainConfig(steps=200, batch_size=128, log_every=10, lr=3e-3)
    result = train(potential, loss, data, cfg, progress_bar=False)
    assert result.history[-1]["residual"] < result.history[0]["residual"]
    raw = torch.cat([p.flatten() for p in potential.parameters()])
    ema = torch.cat([p.flatten() for p in result.ema.parameters()])
    assert not torch.equal(raw, ema)


def test_time_budget_stops_training():
    potential, loss, data = setup()
    result = train(potential, loss, data, TrainConfig(steps=10**6, time_budget=0.5), progress_bar=False)
    assert 0 < result.steps < 10**6 and result.seconds < 5


def test_divergence_is_reported_clearly():
    potential, _, data = setup()
    bad = lambda pot, x: LossOutput(pot(x, torch.rand(len(x))).mean() * float("nan"), {})  # noqa: E731
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        train(potential, bad, data, TrainConfig(steps=5), progress_bar=False)
