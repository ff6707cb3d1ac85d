"""Data parallelism: two CPU processes (gloo) train as one process on the whole batch, resume exactly, agree on
every decision, and share out sampling in order. The processes are spawned once, run every scenario in turn and
send back plain numbers; the tests below check them against single-process references."""

import csv
import dataclasses
import itertools
import warnings

import pytest
import torch
from conftest import RowSource, interrupt_at, run_as_ranks
from safetensors import safe_open

from vpfb import distributed
from vpfb.config import TrainConfig
from vpfb.distributed import World
from vpfb.losses import DeepRitzLoss, LossOutput
from vpfb.parameterisation import EnergyPotential
from vpfb.paths import LinearPath
from vpfb.potentials import MLPPotential
from vpfb.training import train
from vpfb.training.trainer import draw_batch

RANKS = 2
BATCH = 32
FIVE_STEPS = TrainConfig(steps=5, batch_size=BATCH, log_every=1, lr=1e-2, grad_clip=0.0)
RESUME = TrainConfig(steps=30, batch_size=BATCH, log_every=5, checkpoint_every=10)


def setup():
    torch.manual_seed(0)
    path = LinearPath()
    return EnergyPotential(MLPPotential(2, hidden=16, depth=2), path), DeepRitzLoss(path), torch.randn(500, 2)


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def global_noise(step):
    """t and ε of the whole batch at `step`, the same in every process."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(BATCH, generator=g).clamp(1e-5, 1 - 1e-5), torch.randn(BATCH, 2, generator=g)


class FixedNoise:
    """The loss on this rank's share of global_noise(call): noise that does not depend on the number of processes."""

    def __init__(self, loss):
        self.loss, self.calls = loss, itertools.count(1)

    def __call__(self, potential, x_bar):
        t, eps = global_noise(next(self.calls))
        part = distributed.current().shard(BATCH)
        return self.loss(potential, x_bar, t[part], eps[part])


def draw(count, generator):
    return torch.randn(count, 3, generator=generator) + torch.arange(count).unsqueeze(1)


# ---- what each spawned rank runs -------------------------------------------------------------------------------


def one_gradient(world):
    """Gradients and loss of the fixed-noise loss on this rank's half of a batch, averaged over the ranks."""
    potential, loss, data = setup()
    world.broadcast_(potential)
    t, eps = global_noise(1)
    part = world.shard(BATCH)
    out = loss(potential, data[:BATCH][part], t[part], eps[part])
    out.loss.backward()
    mean_loss, residual = world.average_gradients(potential, out.loss, out.parts["residual"])
    missing = [name for name, p in potential.named_parameters() if p.grad is None]
    grads = torch.cat([p.grad.flatten() for p in potential.parameters() if p.grad is not None])
    return {"grads": grads.tolist(), "loss": mean_loss.item(), "residual": residual.item(), "missing": missing}


def five_steps(world):
    potential, loss, data = setup()
    result = train(potential, FixedNoise(loss), RowSource(data), FIVE_STEPS, progress_bar=False)
    return {
        "weights": flat(potential).tolist(),
        "ema": flat(result.ema).tolist(),
        "losses": [row["loss"] for row in result.history],
        "steps": result.steps,
    }


def resume(world, run_dir):
    """An uninterrupted run, and one stopped at step 25 (its newest checkpoint: step 20) then resumed."""
    potential, loss, data = setup()
    whole = train(potential, loss, data, RESUME, progress_bar=False, run_dir=run_dir / "whole")
    potential, loss, data = setup()
    try:
        train(
            potential,
            loss,
            data,
            dataclasses.replace(RESUME, sample_every=1),
            progress_bar=False,
            run_dir=run_dir / "stopped",
            callback=interrupt_at(25),
        )
    except KeyboardInterrupt:
        pass
    potential, loss, data = setup()
    resumed = train(potential, loss, data, RESUME, progress_bar=False, run_dir=run_dir / "stopped")
    return {
        "whole_losses": [row["loss"] for row in whole.history],
        "whole_ema": flat(whole.ema).tolist(),
        "resumed_from": resumed.resumed_from,
        "resumed_steps": [row["step"] for row in resumed.history],
        "resumed_ema": flat(resumed.ema).tolist(),
    }


def nan_on_rank_1_at_step_3(world):
    """Rank 1's loss alone is NaN at step 3: every rank must restore the state of step 2 and skip the batch."""
    potential, loss, data = setup()
    calls = itertools.count(1)

    def fn(pot, x):
        out = loss(pot, x)
        return LossOutput(out.loss * float("nan"), out.parts) if next(calls) == 3 and world.rank == 1 else out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(
            potential, fn, data, dataclasses.replace(RESUME, steps=5, checkpoint_every=2), progress_bar=False
        )
    return {
        "weights": flat(potential).tolist(),
        "steps": result.steps,
        "logged": [r["step"] for r in result.history],
        "warnings": [str(w.message).split(":")[0] for w in caught],
    }


def odd_batch(world):
    try:
        train(*setup(), dataclasses.replace(RESUME, batch_size=BATCH + 1), progress_bar=False)
    except ValueError as err:
        return str(err)
    return "no error"


def time_budget(world):
    """Steps taken within a 0.3 s budget: the same on every rank, which follow rank 0's clock."""
    return train(*setup(), TrainConfig(steps=10**6, batch_size=BATCH, time_budget=0.3), progress_bar=False).steps


def report(world: World, run_dir) -> dict:
    """Everything one rank measures, as plain numbers."""
    return {
        "world": (world.rank, world.size, world.is_main),
        "gradient": one_gradient(world),
        "five_steps": five_steps(world),
        "resume": resume(world, run_dir),
        "nan": nan_on_rank_1_at_step_3(world),
        "odd_batch": odd_batch(world),
        "budget": time_budget(world),
        "samples": world.sample_sharded(draw, 7, seed=5).tolist(),
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each rank's report, from RANKS processes started as torchrun would (its environment variables)."""
    run_dir = tmp_path_factory.mktemp("ddp")
    return {**run_as_ranks(report, RANKS, run_dir), "run_dir": run_dir}


# ---- the tests ---------------------------------------------------------------------------------------------------


def test_processes_read_torchruns_environment(ranks):
    assert [ranks[r]["world"] for r in range(RANKS)] == [(0, 2, True), (1, 2, False)]


def test_averaged_gradients_are_those_of_the_whole_batch_in_one_process(ranks):
    potential, loss, data = setup()
    t, eps = global_noise(1)
    out = loss(potential, data[:BATCH], t, eps)
    out.loss.backward()
    reference = torch.cat([p.grad.flatten() for p in potential.parameters() if p.grad is not None])
    missing = [name for name, p in potential.named_parameters() if p.grad is None]
    for r in range(RANKS):
        report = ranks[r]["gradient"]
        assert report["missing"] == missing == ["net.head.bias"]  # ∇ₓΦ does not see it: no gradient anywhere
        torch.testing.assert_close(torch.tensor(report["grads"]), reference, rtol=0, atol=1e-6)
        assert report["loss"] == pytest.approx(out.loss.item(), abs=1e-6)
        assert report["residual"] == pytest.approx(out.parts["residual"].item(), abs=1e-6)
    assert ranks[0]["gradient"]["grads"] == ranks[1]["gradient"]["grads"]


def test_five_steps_on_two_processes_equal_five_on_one(ranks):
    potential, loss, data = setup()
    single = train(potential, FixedNoise(loss), RowSource(data), FIVE_STEPS, progress_bar=False)
    for r in range(RANKS):
        report = ranks[r]["five_steps"]
        assert report["steps"] == 5
        torch.testing.assert_close(torch.tensor(report["weights"]), flat(potential), rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.tensor(report["ema"]), flat(single.ema), rtol=0, atol=1e-6)
        assert report["losses"] == pytest.approx([row["loss"] for row in single.history], abs=1e-6)
    assert not torch.equal(torch.tensor(ranks[0]["five_steps"]["weights"]), flat(setup()[0]))  # it did train
    # the ranks hold the very same weights, not merely close ones
    assert ranks[0]["five_steps"]["weights"] == ranks[1]["five_steps"]["weights"]
    assert ranks[0]["five_steps"]["ema"] == ranks[1]["five_steps"]["ema"]


def test_two_processes_resume_exactly_from_rank_0s_checkpoint(ranks):
    for r in range(RANKS):
        report = ranks[r]["resume"]
        assert report["resumed_from"] == 20 and report["resumed_steps"] == [25, 30]
        assert report["resumed_ema"] == report["whole_ema"]
    logged = list(csv.DictReader(open(ranks["run_dir"] / "stopped" / "metrics.csv")))
    assert [int(row["step"]) for row in logged] == [5, 10, 15, 20, 25, 30]
    assert [float(row["loss"]) for row in logged] == ranks[0]["resume"]["whole_losses"]
    assert ranks[0]["resume"]["resumed_ema"] == ranks[1]["resume"]["resumed_ema"]


def test_the_checkpoint_holds_each_ranks_own_noise(ranks):
    path = ranks["run_dir"] / "whole" / "checkpoints" / "step-00000030.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        states = [fh.get_tensor(f"rng.rank.{r}.torch") for r in range(RANKS)]
        assert torch.equal(states[0], fh.get_tensor("rng.torch"))
    assert not torch.equal(states[0], states[1])  # seeded seed + rank: the ranks draw different t and ε


def test_a_non_finite_loss_on_one_rank_makes_every_rank_restore(ranks):
    for r in range(RANKS):
        report = ranks[r]["nan"]
        assert report["steps"] == 5 and report["logged"] == [5]
    assert ranks[0]["nan"]["warnings"] == ["non-finite loss or gradient at step 3"]
    assert ranks[1]["nan"]["warnings"] == []  # rank 0 alone speaks
    assert ranks[0]["nan"]["weights"] == ranks[1]["nan"]["weights"]


def test_the_ranks_stop_together_when_the_time_budget_is_spent(ranks):
    assert ranks[0]["budget"] == ranks[1]["budget"] > 0


def test_a_global_batch_that_does_not_divide_is_a_clear_error(ranks):
    for r in range(RANKS):
        assert ranks[r]["odd_batch"] == "train.batch_size=33 is the global batch and must divide by the 2 processes"


def test_sample_sharded_gathers_every_ranks_share_in_order(ranks):
    expected = torch.cat([draw(4, torch.Generator().manual_seed(5)), draw(3, torch.Generator().manual_seed(6))])
    for r in range(RANKS):
        assert torch.equal(torch.tensor(ranks[r]["samples"]), expected)


# ---- one process: no process group, nothing changes ----------------------------------------------------------------


def test_a_single_process_is_a_world_of_one_that_changes_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = distributed.init()
    assert world == World() and world.is_main and not torch.distributed.is_initialized()
    assert world.shard(10) == slice(0, 10) and world.broadcast_value(1.5) == 1.5
    potential, loss, data = setup()
    loss(potential, data[:8]).loss.backward()
    before = [None if p.grad is None else p.grad.clone() for p in potential.parameters()]
    scalar = torch.tensor(2.0)
    assert world.average_gradients(potential, scalar)[0] is scalar
    assert all((a is None and p.grad is None) or torch.equal(a, p.grad) for a, p in zip(before, potential.parameters()))
    assert torch.equal(world.sample_sharded(draw, 5, seed=3), draw(5, torch.Generator().manual_seed(3)))
    assert world.gather_rng_states(torch.device("cpu")) == {}


def test_shards_are_contiguous_cover_everything_and_differ_by_at_most_one():
    for n, size in [(10, 3), (32, 2), (5, 5), (7, 4)]:
        parts = [World(r, size).shard(n) for r in range(size)]
        assert [list(range(n)[p]) for p in parts] == [list(c) for c in _blocks(n, size)]


def _blocks(n, size):
    sizes = [n // size + (r < n % size) for r in range(size)]
    starts = list(itertools.accumulate([0] + sizes))
    return [range(a, b) for a, b in zip(starts, starts[1:])]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK=2 must be below WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "one", "LOCAL_RANK": "0"}, "non-negative integers, got RANK='one'"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "got LOCAL_RANK=''"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "MASTER_ADDR and MASTER_PORT unset"),
    ],
)
def test_a_bad_launch_environment_is_a_clear_error(monkeypatch, env, message):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        distributed.init("cpu")
    assert not torch.distributed.is_initialized()


def test_a_rank_draws_its_rows_of_the_global_batch_and_the_generator_moves_as_in_one_process():
    data = torch.randn(50, 2)
    labelled = LabelledRows(data)
    whole_gen, part_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, labels = draw_batch(labelled, whole_gen, 8, torch.device("cpu"))
    x_part, labels_part = draw_batch(labelled, part_gen, 8, torch.device("cpu"), World(1, 2).shard(8))
    assert torch.equal(x_part, x[4:]) and torch.equal(labels_part, labels[4:])
    assert torch.equal(part_gen.get_state(), whole_gen.get_state())
    tensor_gen = torch.Generator().manual_seed(3)
    assert torch.equal(
        draw_batch(data, tensor_gen, 8, torch.device("cpu"), slice(0, 4)),
        data[torch.randint(50, (8,), generator=torch.Generator().manual_seed(3))[:4]],
    )


class LabelledRows(RowSource):
    def batch(self, index, generator):
        return super().batch(index, generator), index % 3


def test_too_few_samples_to_share_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot share 1 samples among 2 processes"):
        World(0, 2).sample_sharded(draw, 1)


def test_resuming_with_another_number_of_processes_warns():
    states = {f"rng.rank.{r}.torch": torch.get_rng_state() for r in range(2)}
    with pytest.warns(UserWarning, match="written by 2 process\\(es\\) and is resumed by 1"):
        World().restore_rng_states(states, torch.device("cpu"), "step-00000010.safetensors")
