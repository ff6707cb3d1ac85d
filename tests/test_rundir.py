"""Run directories: a different run is refused before anything is written, one process at a time, explicit
--resume / --force, a user's own folder left alone."""

import json
import warnings

import pytest
import torch

from vpfb.cli import main
from vpfb.config import load_config
from vpfb.fit import fit
from vpfb.training import rundir
from vpfb.training.rundir import RunDirectoryError, claim


def tiny(*overrides):
    return load_config(
        None,
        [
            "model.hidden=8",
            "model.depth=1",
            "train.steps=4",
            "train.batch_size=16",
            "eval.calibrate=false",
            "loss.partition_weight=0",
            *overrides,
        ],
    )


def points(seed=0):
    return torch.randn(64, 3, generator=torch.Generator().manual_seed(seed))


def snapshot(run):
    """Every file's bytes under `run`, the lock file aside."""
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != rundir.LOCK}


@pytest.fixture
def finished(tmp_path):
    run = tmp_path / "run"
    fit(tiny(), run, points(), progress_bar=False)
    return run


def test_a_run_records_what_made_it(finished):
    record = json.loads((finished / rundir.RECORD).read_text())
    assert record["config"]["train"]["steps"] == 4 and record["vpfb"] and len(record["data"]) == 64


def test_the_same_run_again_resumes_it_and_changes_nothing_it_trained(finished):
    before = (finished / "model.safetensors").read_bytes()
    fit(tiny("train.log_every=1"), finished, points(), progress_bar=False)  # logging is bookkeeping, not the run
    assert (finished / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "change,named",
    [
        ({"overrides": ["train.lr=0.01"]}, "train.lr: 0.003 → 0.01"),
        ({"overrides": ["train.steps=8"]}, "train.steps: 4 → 8"),
        ({"seed": 1}, "the training data differ"),
    ],
)
def test_a_different_run_is_refused_and_nothing_is_touched(finished, change, named):
    before = snapshot(finished)
    with pytest.raises(RunDirectoryError, match="holds a different run") as err:
        fit(tiny(*change.get("overrides", [])), finished, points(change.get("seed", 0)), progress_bar=False)
    assert named in str(err.value) and "--resume" in str(err.value) and "--force" in str(err.value)
    assert snapshot(finished) == before


def test_resume_continues_the_run_under_the_new_settings(finished):
    with pytest.warns(UserWarning, match=r"other settings .*train.steps: 4 → 8"):
        model = fit(tiny("train.steps=8"), finished, points(), progress_bar=False, existing="resume")
    rows = (finished / "metrics.csv").read_text().splitlines()
    assert rows[-1].startswith("8,") and model.config.train.steps == 8
    assert json.loads((finished / rundir.RECORD).read_text())["config"]["train"]["steps"] == 8


def test_restart_discards_the_old_run(finished):
    (finished / "eval").mkdir()
    (finished / "eval" / "ood.json").write_text("{}")  # a result of the old model must not survive it
    fit(tiny("train.lr=0.01"), finished, points(1), progress_bar=False, existing="restart")
    assert not (finished / "eval").exists()
    assert json.loads((finished / rundir.RECORD).read_text())["config"]["train"]["lr"] == 0.01


def test_a_users_folder_is_refused_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my own settings")
    for existing in rundir.EXISTING:
        with pytest.raises(RunDirectoryError, match="holds no vpfb run"):
            fit(tiny(), folder, points(), progress_bar=False, existing=existing)
    assert [p.name for p in folder.iterdir()] == ["config.yaml"]
    assert (folder / "config.yaml").read_text() == "my own settings"


def test_a_rejected_command_leaves_a_finished_run_alone(finished):
    before = snapshot(finished)
    with pytest.raises(ValueError, match="train.steps must be at least"):
        fit(tiny("train.steps=-5"), finished, points(), progress_bar=False)
    assert snapshot(finished) == before


def test_one_process_at_a_time(tmp_path):
    with claim(tmp_path / "run", {"a": 1}, "data"):
        with pytest.raises(RunDirectoryError, match=r"another vpfb process \(pid \d+\) is training"):
            with claim(tmp_path / "run", {"a": 1}, "data"):
                pass
    with claim(tmp_path / "run", {"a": 1}, "data"):  # released when the first one ended
        pass


def test_a_run_without_a_record_needs_an_explicit_choice(tmp_path):
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunDirectoryError, match="without a record"):
        with claim(tmp_path / "old", {}, "data"):
            pass
    with claim(tmp_path / "old", {}, "data", existing="resume") as run:
        assert run == tmp_path / "old"


def test_the_command_line_refuses_names_the_way_out_and_takes_force(tmp_path, capsys):
    data = tmp_path / "a.npy"
    import numpy as np

    np.save(data, points().numpy())
    argv = [
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "model.hidden=8",
        "model.depth=1",
        "train.batch_size=16",
        "eval.calibrate=false",
        "loss.partition_weight=0",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--steps", "3"]) == 0
        assert main([*argv, "--steps", "5"]) == 2
        assert "holds a different run (train.steps: 3 → 5)" in capsys.readouterr().err
        assert main([*argv, "--steps", "5", "--resume", "--force"]) == 2
        assert main([*argv, "--steps", "5", "--force"]) == 0
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[-1].startswith("5,")
