import csv
import dataclasses
import importlib.util
import itertools
import math
import sys

import pytest
import torch
from conftest import RowSource, interrupt_at

from vpfb.config import TrainConfig
from vpfb.losses import DeepRitzLoss, LossOutput
from vpfb.parameterisation import EnergyPotential
from vpfb.paths import LinearPath
from vpfb.potentials import MLPPotential
from vpfb.training import checkpoint, learning_rate, train
from vpfb.training.trainer import clip_to_second_moment_, ema_decay


def setup(seed=0):
    torch.manual_seed(seed)
    path = LinearPath()
    return EnergyPotential(MLPPotential(2, hidden=16, depth=2), path), DeepRitzLoss(path), torch.randn(500, 2)


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


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


def test_ema_decay_ramps_up_to_the_configured_value():
    cfg = TrainConfig(ema=0.999)
    assert [ema_decay(cfg, n) for n in (1, 2, 90, 10_000)] == pytest.approx([2 / 11, 3 / 12, 91 / 100, 0.999])
    assert all(1 / (1 - ema_decay(cfg, n)) <= n for n in range(2, 20_000))  # the horizon never exceeds the run
    assert ema_decay(dataclasses.replace(cfg, ema_warmup=False), 1) == 0.999


@pytest.mark.parametrize("warmup", [True, False])
def test_a_run_shorter_than_the_ema_horizon_saves_weights_near_the_trained_ones(warmup):
    potential, loss, data = setup()
    initial = flat(potential)
    cfg = TrainConfig(steps=60, batch_size=64, lr=3e-3, ema=0.9999, ema_warmup=warmup)  # horizon 10,000 steps
    saved = flat(train(potential, loss, data, cfg, progress_bar=False).ema)
    to_trained, to_initial = (saved - flat(potential)).norm(), (saved - initial).norm()
    if warmup:  # the ramp's horizon is ≈ 8 steps: the saved weights sit among the last iterates
        assert to_trained < 0.1 * to_initial
    else:  # a fixed decay keeps 99.4% (0.9999⁵⁹) of the weights after the first step
        assert to_initial < 0.2 * to_trained


def test_resume_inside_the_ema_warmup_is_exact(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=32, log_every=5, checkpoint_every=10, ema=0.999)
    whole = train(*setup(), cfg, progress_bar=False)
    with pytest.raises(KeyboardInterrupt):  # the checkpoint of step 10 holds an EMA still on its ramp (β ≈ 0.5)
        train(
            *setup(),
            dataclasses.replace(cfg, sample_every=1),
            progress_bar=False,
            run_dir=tmp_path,
            callback=interrupt_at(15),
        )
    resumed = train(*setup(), cfg, progress_bar=False, run_dir=tmp_path)
    assert resumed.resumed_from == 10 and ema_decay(cfg, 10) < cfg.ema
    assert torch.equal(flat(resumed.ema), flat(whole.ema))


def test_a_small_step_trains_on_one_thread_and_the_setting_wins(monkeypatch):
    seen = []
    before = torch.get_num_threads()
    record = lambda step, ema: seen.append(torch.get_num_threads())  # noqa: E731
    cfg = TrainConfig(steps=2, batch_size=16, sample_every=1)
    train(*setup(), cfg, progress_bar=False, callback=record)
    train(*setup(), dataclasses.replace(cfg, threads=2), progress_bar=False, callback=record)
    monkeypatch.setattr("vpfb.training.trainer.SMALL_STEP", 100)  # now a big step: torch's default stays
    train(*setup(), cfg, progress_bar=False, callback=record)
    assert seen == [1, 1, 2, 2, before, before] and torch.get_num_threads() == before


def test_time_budget_stops_training():
    potential, loss, data = setup()
    result = train(potential, loss, data, TrainConfig(steps=10**6, time_budget=0.5), progress_bar=False)
    assert 0 < result.steps < 10**6 and result.seconds < 5


def test_divergence_is_reported_clearly():
    potential, _, data = setup()
    bad = lambda pot, x: LossOutput(pot(x, torch.rand(len(x))).mean() * float("nan"), {})  # noqa: E731
    with (
        pytest.warns(UserWarning, match="restored the state of step 0"),
        pytest.raises(FloatingPointError, match="loss became nan at step 1"),
    ):
        train(potential, bad, data, TrainConfig(steps=5), progress_bar=False)


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1e-3, lr_final=1e-4)
    assert [learning_rate(cfg, s) for s in (1, 5, 10)] == pytest.approx([1e-4, 5e-4, 1e-3], rel=1e-12)
    assert learning_rate(cfg, 60) == pytest.approx(5.5e-4, rel=1e-12)  # half way through the decay: the mean
    assert learning_rate(cfg, 110) == pytest.approx(1e-4, rel=1e-12)
    assert learning_rate(TrainConfig(steps=100, lr=1e-3, lr_final=0.0), 25) == pytest.approx(0.5e-3 * (1 + 0.5**0.5))


def test_logged_lr_follows_the_schedule():
    potential, loss, data = setup()
    cfg = TrainConfig(steps=30, batch_size=16, log_every=5, warmup_steps=10)
    result = train(potential, loss, data, cfg, progress_bar=False)
    assert [row["lr"] for row in result.history] == [learning_rate(cfg, s) for s in range(5, 31, 5)]


def test_released_clipping_bounds_each_entry_by_adams_second_moment():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.999))
    g1 = torch.tensor([1.0, -2.0, 0.5])
    p.grad = g1.clone()
    clip_to_second_moment_(opt)  # no v̂ yet: unclipped
    assert torch.equal(p.grad, g1)
    opt.step()
    p.grad = torch.tensor([10.0, -10.0, 0.5])  # v̂ = g1², bound 3|g1| + 0.1 = (3.1, 6.1, 1.6)
    clip_to_second_moment_(opt)
    torch.testing.assert_close(p.grad, torch.tensor([3.1, -6.1, 0.5]))
    g2 = p.grad.clone()
    opt.step()
    p.grad = torch.full((3,), -100.0)  # v̂ = (β₂·0.001·g1² + 0.001·g2²) / (1 − β₂²)
    clip_to_second_moment_(opt)
    v_hat = (0.999 * 0.001 * g1**2 + 0.001 * g2**2) / (1 - 0.999**2)
    torch.testing.assert_close(p.grad, -(3 * v_hat.sqrt() + 0.1))


def test_released_clip_mode_trains():
    potential, loss, data = setup()
    cfg = TrainConfig(steps=40, batch_size=32, log_every=10, clip_mode="released")
    result = train(potential, loss, data, cfg, progress_bar=False)
    assert result.steps == 40 and all(math.isfinite(row["loss"]) for row in result.history)


def nan_at(loss, bad_steps):
    """The loss, but NaN at the given steps (one call per step)."""
    calls = itertools.count(1)

    def fn(potential, x):
        out = loss(potential, x)
        return LossOutput(out.loss * float("nan"), out.parts) if next(calls) in bad_steps else out

    return fn


def test_nan_guard_restores_the_last_good_state_and_skips_the_batch():
    potential, loss, data = setup()
    seen = {}
    keep = lambda step, ema: seen.setdefault(step, (flat(potential), flat(ema)))  # noqa: E731
    cfg = TrainConfig(steps=7, batch_size=32, checkpoint_every=5, sample_every=1)
    with pytest.warns(UserWarning, match="at step 7: restored the state of step 5 and skipped this batch"):
        result = train(potential, nan_at(loss, {7}), data, cfg, progress_bar=False, callback=keep)
    assert result.steps == 7 and sorted(seen) == [1, 2, 3, 4, 5, 6]
    assert torch.equal(flat(potential), seen[5][0]) and torch.equal(flat(result.ema), seen[5][1])


def test_nan_guard_gives_up_after_max_restores():
    potential, loss, data = setup()
    cfg = TrainConfig(steps=20, batch_size=32, checkpoint_every=2, max_restores=2)
    gives_up = r"loss became nan at step 3 .*after 2 restore\(s\) of the state of step 2\. Lower"
    with pytest.warns(UserWarning) as caught, pytest.raises(FloatingPointError, match=gives_up):
        train(potential, nan_at(loss, set(range(3, 21))), data, cfg, progress_bar=False)
    assert [str(w.message).split(":")[0] for w in caught] == [
        f"non-finite loss or gradient at step {s}" for s in (3, 4)
    ]


def test_nan_guard_ends_a_run_that_fails_every_other_step(tmp_path):
    potential, loss, data = setup()
    cfg = TrainConfig(steps=200, batch_size=32, checkpoint_every=10, max_restores=3)
    gives_up = r"at step 11 .*restore\(s\) of the state of step 10; \S+ keeps the checkpoint of step 10\. Lower"
    with pytest.warns(UserWarning) as caught, pytest.raises(FloatingPointError, match=gives_up):
        train(potential, nan_at(loss, set(range(11, 201, 2))), data, cfg, progress_bar=False, run_dir=tmp_path)
    assert len(caught) == 3  # steps 11, 13, 15 restored; the fourth failure, at 17, ends the run
    saved = checkpoint.load_latest(tmp_path)  # the last good state, also left in the potential
    assert saved.step == 10 and torch.equal(
        flat(potential),
        torch.cat([saved.tensors[f"model.{name}"].flatten() for name, _ in potential.named_parameters()]),
    )


def test_a_non_finite_gradient_with_a_finite_loss_is_caught():
    potential, _, data = setup()
    first = next(potential.parameters())
    sqrt_at_zero = lambda pot, x: LossOutput(torch.sqrt((first - first.detach()).sum()))  # noqa: E731 (0, slope ∞)
    with pytest.raises(FloatingPointError, match=r"gradient norm became (inf|nan) \(loss 0.0\) at step 1"):
        train(potential, sqrt_at_zero, data, TrainConfig(steps=3, max_restores=0, grad_clip=0.0), progress_bar=False)


def test_a_batch_source_is_drawn_with_the_trainers_generator_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=32, log_every=5, checkpoint_every=10)
    potential, loss, data = setup()
    source = RowSource(data)
    whole = train(potential, loss, source, cfg, progress_bar=False)
    assert len(source.generators) == 1

    potential, loss, data = setup()
    with pytest.raises(KeyboardInterrupt):  # at step 25, after its row is logged; the newest checkpoint is step 20
        train(
            potential,
            loss,
            RowSource(data),
            dataclasses.replace(cfg, sample_every=1),
            progress_bar=False,
            run_dir=tmp_path,
            callback=interrupt_at(25),
        )
    potential, loss, data = setup()
    resumed = train(potential, loss, RowSource(data), cfg, progress_bar=False, run_dir=tmp_path)
    assert resumed.resumed_from == 20 and [r["step"] for r in resumed.history] == [25, 30]
    logged = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in logged] == [5, 10, 15, 20, 25, 30]
    assert [float(r["loss"]) for r in logged] == [r["loss"] for r in whole.history]
    assert torch.equal(flat(resumed.ema), flat(whole.ema))


def test_the_callback_sees_the_ema_every_sample_every_steps_and_leaves_training_alone():
    calls = []

    def sample(step, ema):
        calls.append((step, ema))
        torch.randn(100)  # a sampler draws noise: that must not shift the training noise

    cfg = TrainConfig(steps=20, batch_size=32, sample_every=5)
    with_callback = train(*setup(), cfg, progress_bar=False, callback=sample)
    without = train(*setup(), cfg, progress_bar=False)
    assert [step for step, _ in calls] == [5, 10, 15, 20] and all(ema is with_callback.ema for _, ema in calls)
    assert torch.equal(flat(with_callback.ema), flat(without.ema))


def test_bf16_autocast_trains_on_cpu():
    result = train(*setup(), TrainConfig(steps=10, batch_size=32, log_every=5, amp="bf16"), progress_bar=False)
    assert all(math.isfinite(row["loss"]) for row in result.history)


def test_tensorboard_missing_is_a_warning_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.warns(UserWarning, match="tensorboard is not installed"):
        train(*setup(), TrainConfig(steps=2, log_every=1, tensorboard=True), tmp_path / "m.csv", progress_bar=False)
    assert len(list(csv.DictReader(open(tmp_path / "m.csv")))) == 2


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_events_go_beside_the_metrics(tmp_path):
    train(*setup(), TrainConfig(steps=4, log_every=2, tensorboard=True), progress_bar=False, run_dir=tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_bf16_training_on_cuda():
    potential, loss, data = setup()
    cfg = TrainConfig(steps=30, batch_size=256, log_every=10, amp="bf16", compile=True)
    result = train(potential.cuda(), loss, data.cuda(), cfg, progress_bar=False)
    assert all(math.isfinite(row["loss"]) for row in result.history)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"clip_mode": "value"}, "train.clip_mode must be one of"),
        ({"amp": "fp16"}, "train.amp must be one of"),
        ({"checkpoint_every": 0}, "train.checkpoint_every must be at least 1"),
        ({"max_restores": -1}, "train.max_restores must be at least 0"),
        ({"compile": True, "amp": "bf16"}, "train.compile=true with train.amp=bf16 on the CPU"),
    ],
)
def test_bad_settings_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        train(*setup(), TrainConfig(steps=2, **change), progress_bar=False)


def test_data_without_a_batch_method_is_a_clear_error():
    with pytest.raises(TypeError, match="batch\\(index, generator\\)"):
        train(setup()[0], setup()[1], [[0.0, 1.0]] * 10, TrainConfig(steps=2), progress_bar=False)
