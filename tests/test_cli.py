import json

import numpy as np
import pytest

from vpfb.cli import main
from vpfb.data import sample_toy


@pytest.mark.slow
def test_train_on_a_point_file_then_sample(tmp_path, capsys):
    np.save(tmp_path / "pts.npy", sample_toy("eightgaussians", 600, seed=0).numpy() * 3 + 7)
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(tmp_path / "pts.npy"), "--out", str(run), "--steps", "60", "model.hidden=32"]) == 0
    )
    for name in (
        "model.safetensors",
        "model.json",
        "config.yaml",
        "metrics.csv",
        "metrics.json",
        "trajectories.png",
        "boltzmann.png",
        "density.png",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["cnf_nll"]) and np.isfinite(metrics["energy_nll"])
    assert main(["sample", str(run), "-n", "50", "--out", str(tmp_path / "s.npy"), "--solver", "euler"]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (50, 2) and abs(samples.mean() - 7) < 3  # back in the user's units
    assert main(["sample", str(run), "-n", "50", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_tiny_or_degenerate_point_files_finish_and_say_what_they_scored(tmp_path, capsys):
    """A 2-D file with a constant column trains and reports (the grid box gets a width); 30 points hold none out and
    the metrics say they are on the training points; a CUDA device on a machine without one is a clear error."""
    x = np.stack([np.linspace(-1, 1, 30), np.full(30, 2.0)], 1)
    np.save(tmp_path / "flat.npy", x)
    argv = [
        "train",
        "--data",
        str(tmp_path / "flat.npy"),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "20",
        "model.hidden=16",
        "eval.calibrate=false",
    ]
    assert main(argv) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["split"] == "training"
    assert "none held out" in capsys.readouterr().out
    if not __import__("torch").cuda.is_available():
        assert main([*argv[:3], "--out", str(tmp_path / "gpu"), "train.device=cuda"]) == 2
        assert "no CUDA GPU is available" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["train", "cifar"], "unknown preset"),
        (["train", "--data", "nowhere.npy"], "does not exist"),
        (["train", "train.stesp=3"], "did you mean 'steps'"),
        (["sample", "no_run", "--out", "x.npy"], "does not exist"),
    ],
)
def test_bad_input_exits_with_a_clear_message(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_a_run_whose_checkpoints_are_all_damaged_is_a_clear_error(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step-00000010.safetensors").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        assert main(["train", "digits-cpu", "--out", str(tmp_path / "run"), "--steps", "20", "--resume"]) == 2
    assert "no usable checkpoint" in capsys.readouterr().err


def test_a_corrupted_image_set_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("torchvision")
    from fakes import write_cifar

    write_cifar(tmp_path / "cifar")  # fake bytes: torchvision's md5 check fails
    argv = ["train", "cifar10", "--out", str(tmp_path / "run"), f"data.root={tmp_path / 'cifar'}", "train.device=cpu"]
    assert main(argv) == 2
    assert "incomplete or corrupted" in capsys.readouterr().err
