"""Checkpoints: exact resume after SIGKILL, fallback past corrupt files, clear errors, atomic writes."""

import csv
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vpfb import files
from vpfb.config import TrainConfig
from vpfb.losses import DeepRitzLoss
from vpfb.parameterisation import EnergyPotential
from vpfb.paths import LinearPath
from vpfb.potentials import MLPPotential
from vpfb.training import checkpoint, train

CFG = TrainConfig(steps=100, batch_size=32, log_every=10, checkpoint_every=20, sample_every=10)

# a training run that kills itself (SIGKILL: no cleanup, no flush) at step 50, after the checkpoints of 20 and 40
CHILD = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from test_checkpoint import CFG, setup
from vpfb.training import train

def die(step, ema):
    if step == 50:
        os.kill(os.getpid(), signal.SIGKILL)

potential, loss, data = setup()
train(potential, loss, data, CFG, progress_bar=False, run_dir=Path(sys.argv[2]), callback=die)
"""


def setup(hidden=16):
    torch.manual_seed(0)
    path = LinearPath()
    return EnergyPotential(MLPPotential(2, hidden=hidden, depth=2), path), DeepRitzLoss(path), torch.randn(500, 2)


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def one_thread():
    # the killed child runs on one thread; the same here keeps float sums in the same order
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run(tmp_path):
    """A run directory after 60 steps with checkpoint_every=20 and keep_checkpoints=2: steps 40 and 60 remain."""
    potential, loss, data = setup()
    cfg = TrainConfig(steps=60, batch_size=32, log_every=10, checkpoint_every=20, keep_checkpoints=2)
    train(potential, loss, data, cfg, progress_bar=False, run_dir=tmp_path / "run")
    return tmp_path / "run"


def test_resume_after_sigkill_continues_exactly(tmp_path, one_thread, capsys):
    run_dir = tmp_path / "run"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert [p.name for p in checkpoint.checkpoint_paths(run_dir)] == [
        "step-00000040.safetensors",
        "step-00000020.safetensors",
    ]
    assert [int(r["step"]) for r in rows(run_dir / "metrics.csv")] == [10, 20, 30, 40, 50]

    potential, loss, data = setup()
    resumed = train(potential, loss, data, CFG, progress_bar=False, run_dir=run_dir)
    assert resumed.resumed_from == 40 and resumed.steps == 100
    err = capsys.readouterr().err
    assert "resuming from" in err and "step-00000040.safetensors (step 40 of 100)" in err
    base_potential, base_loss, base_data = setup()
    baseline = train(base_potential, base_loss, base_data, CFG, tmp_path / "base.csv", progress_bar=False)

    got, want = rows(run_dir / "metrics.csv"), rows(tmp_path / "base.csv")
    assert [int(r["step"]) for r in got] == list(range(10, 101, 10))  # step 50 once, though logged twice
    for key in ("loss", "residual", "lr", "grad_norm"):
        assert [r[key] for r in got] == [r[key] for r in want], key
    assert torch.equal(flat(potential), flat(base_potential))
    assert torch.equal(flat(resumed.ema), flat(baseline.ema))


# a run that checkpoints every 3 steps (so that many kills land inside a checkpoint write) and prints "done"
FAULT_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from test_checkpoint import FAULT_CFG, setup
from vpfb.training import train

potential, loss, data = setup()
train(potential, loss, data, FAULT_CFG, progress_bar=False, run_dir=Path(sys.argv[2]))
print("done")
"""
FAULT_CFG = TrainConfig(steps=240, batch_size=32, log_every=10, checkpoint_every=3, keep_checkpoints=2)


@pytest.mark.slow
def test_killed_at_random_moments_a_run_always_resumes_to_the_uninterrupted_weights(tmp_path, one_thread):
    """Six times, SIGKILL a random 0–40 ms after the run has advanced a random 3–30 steps past its newest checkpoint
    (checkpoints every 3 steps, so many kills land inside a write), resuming each time; then let it finish: its final
    weights and EMA equal an uninterrupted run's, bit for bit, however fast the machine."""
    import random
    import time

    rng, run_dir = random.Random(0), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    newest = lambda: max((p.name for p in checkpoint.checkpoint_paths(run_dir)), default="")  # noqa: E731
    for kill in range(7):
        child = subprocess.Popen(
            [sys.executable, "-c", FAULT_CHILD, str(Path(__file__).parent), str(run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        if kill < 6:
            start, target = newest(), rng.randint(1, 10)  # checkpoints to wait for: 3–30 steps
            seen = start
            while child.poll() is None and target:
                time.sleep(0.005)
                if newest() != seen:
                    seen, target = newest(), target - 1
            time.sleep(rng.uniform(0, 0.04))
            child.send_signal(signal.SIGKILL)
            child.communicate()
            assert child.returncode == -signal.SIGKILL  # killed mid-run, not finished
            continue
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0 and "done" in out, err
    potential, loss, data = setup()
    baseline = train(potential, loss, data, FAULT_CFG, progress_bar=False)
    final = checkpoint.load_latest(run_dir)
    assert final.step == FAULT_CFG.steps
    for prefix, module in (("model.", potential), ("ema.module.", baseline.ema)):
        saved = torch.cat([final.tensors[prefix + k].flatten() for k, _ in module.named_parameters()])
        assert torch.equal(saved, flat(module)), prefix


def test_resume_says_so_and_a_finished_run_stays_finished(run, capsys):
    potential, loss, data = setup()
    cfg = TrainConfig(steps=60, batch_size=32, log_every=10, checkpoint_every=20)
    before = (run / "metrics.csv").read_text()
    result = train(potential, loss, data, cfg, progress_bar=False, run_dir=run)
    err = capsys.readouterr().err
    assert "resuming from" in err and "step-00000060.safetensors" in err
    assert (result.resumed_from, result.steps, result.history) == (60, 60, [])
    assert (run / "metrics.csv").read_text() == before


def test_keeps_the_newest_checkpoints_as_safetensors_with_a_json_record(run):
    assert [p.name for p in checkpoint.checkpoint_paths(run)] == [
        "step-00000060.safetensors",
        "step-00000040.safetensors",
    ]
    with safe_open(str(run / "checkpoints" / "step-00000060.safetensors"), framework="pt") as fh:
        record = json.loads(fh.metadata()["vpfb"])
        assert fh.get_tensor("rng.torch").dtype == torch.uint8 and fh.get_tensor("rng.batches").dtype == torch.uint8
        names = set(fh.keys())
    assert {"model.net.head.weight", "ema.n_averaged", "optimiser.0.exp_avg_sq", "optimiser.0.step"} <= names
    assert record["step"] == 60 and record["config"]["checkpoint_every"] == 20
    assert record["param_groups"][0]["betas"] == [0.9, 0.999]


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path):
    path.write_bytes(torch.randint(0, 256, (path.stat().st_size,), dtype=torch.uint8).numpy().tobytes())


def flip_last_byte(path):  # the tensors' bytes change, the header stays valid: only the checksum can tell
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [truncate, garbage, flip_last_byte])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(run, corrupt):
    corrupt(run / "checkpoints" / "step-00000060.safetensors")
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step-00000060\.safetensors: (unreadable|checksum)"):
        snapshot = checkpoint.load_latest(run)
    assert snapshot.step == 40 and snapshot.source.endswith("step-00000040.safetensors")


def test_training_resumes_from_the_previous_checkpoint_when_the_newest_is_corrupt(run):
    truncate(run / "checkpoints" / "step-00000060.safetensors")
    potential, loss, data = setup()
    cfg = TrainConfig(steps=60, batch_size=32, log_every=10, checkpoint_every=20)
    with pytest.warns(UserWarning, match="step-00000060"):
        result = train(potential, loss, data, cfg, progress_bar=False, run_dir=run)
    assert result.resumed_from == 40 and [r["step"] for r in result.history] == [50, 60]
    assert checkpoint.load_latest(run).step == 60  # rewritten intact


def test_no_usable_checkpoint_is_a_clear_error(run):
    for path in checkpoint.checkpoint_paths(run):
        garbage(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"no usable checkpoint in .*step-00000060.*step-00000040"):
            train(*setup(), TrainConfig(steps=80), progress_bar=False, run_dir=run)


def test_a_checkpoint_of_another_architecture_is_a_clear_error(run):
    with pytest.raises(
        ValueError,
        match=r"different architecture: parameter net.layers.0.weight has shape "
        r"\(16, 3\), model expects \(32, 3\)",
    ):
        train(*setup(hidden=32), TrainConfig(steps=80), progress_bar=False, run_dir=run)


def test_a_crash_while_writing_leaves_the_previous_checkpoint_intact(run, monkeypatch):
    before = checkpoint.load_latest(run)

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", crash)  # the temporary file is written, not yet renamed
    later = checkpoint.Snapshot(80, 1.0, before.tensors, before.meta)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(later, run, keep=2)
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000040.safetensors",
        "step-00000060.safetensors",
    ]
    after = checkpoint.load_latest(run)
    assert after.step == 60 and all(torch.equal(after.tensors[k], v) for k, v in before.tensors.items())


def test_a_half_written_temporary_file_is_ignored_then_removed(run):
    stray = run / "checkpoints" / ".step-00000080.k3x9.tmp"  # what a process killed inside atomic_write leaves
    stray.write_bytes(b"\x00" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        snapshot = checkpoint.load_latest(run)
    assert snapshot.step == 60
    checkpoint.save(checkpoint.Snapshot(80, 1.0, snapshot.tensors, snapshot.meta), run, keep=2)
    assert not stray.exists()
    assert [p.name for p in checkpoint.checkpoint_paths(run)] == [
        "step-00000080.safetensors",
        "step-00000060.safetensors",
    ]


def stop_at(stop):
    def callback(step, ema):
        if step == stop:
            raise KeyboardInterrupt

    return callback


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_resume_on_cuda_is_exact(tmp_path, amp):
    cfg = TrainConfig(steps=60, batch_size=256, log_every=10, checkpoint_every=20, sample_every=1, amp=amp)

    def run(run_dir=None, callback=None):
        potential, loss, data = setup()
        potential.cuda()
        return potential, train(
            potential, loss, data.cuda(), cfg, progress_bar=False, run_dir=run_dir, callback=callback
        )

    base_potential, baseline = run()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop_at(50))
    potential, resumed = run(tmp_path)
    assert resumed.resumed_from == 40
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in baseline.history if r["step"] > 40]
    assert torch.equal(flat(potential), flat(base_potential)) and torch.equal(flat(resumed.ema), flat(baseline.ema))
