"""Image models end to end on scikit-learn's digits: presets, training, the run directory, the model handle."""

import numpy as np
import pytest
import torch

import vpfb
from vpfb.cli import main
from vpfb.config import ConfigError, load_config, presets
from vpfb.factory import IMAGE_ARCHITECTURES, build_network
from vpfb.fit import fit
from vpfb.potentials import unet_config

TINY = ["train.steps=6", "train.batch_size=8", "train.sample_every=0", "train.checkpoint_every=3", "train.log_every=1"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits")
    fit(load_config("digits-cpu", TINY), run, progress_bar=False)
    return run


def test_the_final_sample_grid_reuses_the_last_steps_grid(tmp_path, monkeypatch):
    """samples.png is the grid the callback drew at the last step (same EMA, same seed), not drawn a second time."""
    from vpfb.model import EnergyModel

    draws, sample = [], EnergyModel.sample
    monkeypatch.setattr(EnergyModel, "sample", lambda self, *a, **k: draws.append(1) or sample(self, *a, **k))
    fit(load_config("digits-cpu", [*TINY, "train.sample_every=3", "eval.solver=euler"]), tmp_path, progress_bar=False)
    grids = sorted((tmp_path / "samples").iterdir())
    assert [g.name for g in grids] == ["step-00000003.png", "step-00000006.png"] and len(draws) == 2
    assert (tmp_path / "samples.png").read_bytes() == grids[-1].read_bytes()


def test_every_image_preset_builds_its_network():
    for name in presets():
        cfg = load_config(name)
        if cfg.model.architecture not in IMAGE_ARCHITECTURES:
            continue
        setting = unet_config(cfg.model.network)
        shape = (setting["in_channels"], setting["image_size"], setting["image_size"])
        if cfg.model.architecture == "wideresnet":
            shape = (3, 32, 32)
        if name.startswith("cifar10") and cfg.model.architecture == "unet":
            net = build_network(cfg, shape)
            params = sum(p.numel() for p in net.parameters())
            assert abs(params - 55.7e6) / 55.7e6 < 0.01, (name, params)
        elif setting["image_size"] <= 28:
            x = torch.randn(2, *shape)
            assert build_network(cfg, shape)(x, torch.rand(2)).shape == (2,)


def test_digits_run_directory_and_handle(digits_run):
    for name in ("config.yaml", "metrics.csv", "model.json", "model.safetensors", "samples.png"):
        assert (digits_run / name).is_file(), name
    assert sorted(p.name for p in (digits_run / "checkpoints").iterdir()) == [
        "step-00000003.safetensors",
        "step-00000006.safetensors",
    ]
    model = vpfb.load(digits_run)
    assert model.shape == (1, 8, 8)
    x = model.sample(3, solver="euler", steps=4)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    for out in (model.log_density(x), model.potential(x), model.boltzmann(x, t=0.9)):
        assert out.shape == (3,) and torch.isfinite(out).all()
    # the energy parameterisation at t = 1 (σ = 0): Φ = ½‖x‖² whatever the weights, so Φ_B there is refused
    torch.testing.assert_close(model.potential(x, 1.0), 0.5 * x.flatten(1).square().sum(1))
    with pytest.raises(ValueError, match="Φ_B is blind"):
        model.boltzmann(x)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bpd, se = model.bits_per_dim(images, generator=torch.Generator().manual_seed(1))
    assert 0 < bpd < 16 and 0 < se < bpd
    with pytest.raises(ValueError, match="uint8"):
        model.bits_per_dim(images.float())


def test_image_models_reject_wrong_images_and_labels(digits_run):
    model = vpfb.load(digits_run)
    with pytest.raises(ValueError, match=r"images of shape \(1, 8, 8\)"):
        model.log_density(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"images of shape \(1, 8, 8\)"):
        model.potential(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, solver="euler", steps=2, labels=3)


def test_a_network_for_other_images_is_a_config_error(tmp_path):
    cfg = load_config("digits-cpu", TINY + ["model.network=mnist5k-cpu"])
    with pytest.raises(ConfigError, match="28"):
        fit(cfg, tmp_path / "run", progress_bar=False)
    with pytest.raises(ConfigError, match="architecture=mlp takes points"):
        build_network(load_config("toy2d"), (1, 8, 8))


def test_conditional_digits_sample_by_label(tmp_path):
    # EMA = the last weights, and a high rate so that the zero-initialised layers let labels through in 6 steps
    cfg = load_config(
        "digits-cpu", TINY + ["model.conditional=true", "train.ema=0.0", "train.warmup_steps=0", "train.lr=0.01"]
    )
    model = fit(cfg, tmp_path / "cond", progress_bar=False)
    loaded = vpfb.load(tmp_path / "cond")
    assert loaded.num_classes == 10
    x = loaded.sample(4, solver="euler", steps=3, labels=torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 1, 8, 8)
    # labels change the potential; the null label (10) is the unconditional model
    x = torch.randn(2, 1, 8, 8)
    phi = [model.potential(x, 0.5, labels=c) for c in (0, 7, 10)]
    assert not torch.allclose(phi[0], phi[1]) and not torch.allclose(phi[0], phi[2])
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        model.potential(x, 0.5, labels=11)
    with pytest.raises(ValueError, match=r"one per sample \(2\)"):
        model.potential(x, 0.5, labels=torch.tensor([1, 2, 3]))


def test_cli_trains_an_image_preset_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "digits-cpu",
        "--out",
        str(out),
        "--steps",
        "4",
        "train.batch_size=8",
        "train.sample_every=0",
        "train.checkpoint_every=2",
    ]
    assert main(args) == 0
    assert main(args[:5] + ["6"] + args[6:]) == 2  # more steps is another run: say so, or --resume
    assert "holds a different run (train.steps: 4 → 6)" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="other settings"):
        assert main(args[:5] + ["6"] + args[6:] + ["--resume"]) == 0
    assert "resuming from" in capsys.readouterr().err
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert (
        main(["sample", str(out), "-n", "4", "--solver", "euler", "--steps", "2", "--out", str(tmp_path / "grid.png")])
        == 0
    )
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_image_data_errors_are_clear(tmp_path, capsys):
    assert main(["train", "digits-cpu", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "r")]) == 2
    assert "missing.npy" in capsys.readouterr().err
    np.save(tmp_path / "rgb.npy", np.zeros((5, 8, 8, 3), dtype=np.uint8))
    assert main(["train", "digits-cpu", "--data", str(tmp_path / "rgb.npy"), "--out", str(tmp_path / "r")]) == 2
    assert "1×8²" in capsys.readouterr().err
    assert main(["train", "no-such-preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_torchrun_two_processes_train_one_run(tmp_path):
    """The multi-GPU command, on CPU: torchrun -m vpfb train ... with 2 gloo processes writes one run."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port of its own, not the fixed 29500 that another job may hold
        "--nproc_per_node=2",
        "-m",
        "vpfb",
        "train",
        "digits-cpu",
        "--out",
        str(out),
        "--steps",
        "4",
        "train.batch_size=8",
        "train.sample_every=0",
        "train.checkpoint_every=2",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-1000:]}\n{done.stderr[-3000:]}"
    assert "in 2 process(es)" in done.stdout
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # one writer: no step logged twice
    assert vpfb.load(out).sample(2, solver="euler", steps=2).shape == (2, 1, 8, 8)
