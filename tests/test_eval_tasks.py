"""`vpfb eval` on a small conditional digits model: every task writes its table and pictures."""

import json

import pytest

from vpfb.cli import main
from vpfb.config import load_config
from vpfb.fit import fit

STEPS = ["train.steps=4", "train.batch_size=8", "train.sample_every=0", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    fit(
        load_config("digits-cpu", STEPS + ["model.conditional=true", "eval.solver=euler"]),
        base / "cond",
        progress_bar=False,
    )
    fit(load_config("digits-cpu", STEPS + ["eval.solver=euler"]), base / "plain", progress_bar=False)
    return base


@pytest.mark.parametrize(
    "task,pictures",
    [
        ("likelihood", []),
        ("ood", ["ood.png"]),
        ("interpolation", ["interpolation.png"]),
        ("composition", ["composition.png"]),
        ("longrun", ["longrun.png", "longrun_sgld.png"]),
    ],
)
def test_each_task_writes_its_table_and_pictures(runs, task, pictures, capsys):
    out = runs / f"out-{task}"
    extra = {"composition": ["--labels", "3", "5"], "longrun": ["--t-end", "2", "--step-size", "0.1"]}.get(task, [])
    assert main(["eval", str(runs / "cond"), "--task", task, "-n", "8", "--out", str(out), *extra]) == 0
    result = json.loads((out / f"{task}.json").read_text())
    for name in pictures:
        assert (out / name).stat().st_size > 0, name
    if task in ("likelihood", "ood", "interpolation"):  # held-out digits: the last 30 of each class
        assert result["split"] == "test"
    if task == "ood":
        # every score but Φ_B (blind at t = 1 under the energy preset) × 9 sets
        scores = {r["score"] for r in result["rows"]}
        assert scores == {
            "log_density",
            "energy_multiscale",
            "likelihood",
            "likelihood_complexity",
            "energy_complexity",
            "grad_norm",
        }
        assert len(result["rows"]) == 6 * 9 and all(0 <= r["auroc"] <= 1 for r in result["rows"])
        assert "AUROC" in capsys.readouterr().out
    if task == "likelihood":
        assert result["bits_per_dim"] > 0 and result["standard_error"] > 0
    if task == "longrun":
        assert set(result) == {"ode", "sgld", "released"} and result["sgld"]["times"][-1] == pytest.approx(2.0)


def test_tasks_a_model_cannot_do_are_clear_errors(runs, capsys):
    assert main(["eval", str(runs / "plain"), "--task", "composition"]) == 2
    assert "conditional" in capsys.readouterr().err
    assert main(["eval", str(runs / "plain"), "--task", "ood", "--protocol", "cifar10"]) == 2
    assert "use protocol" in capsys.readouterr().err
    assert main(["eval", str(runs / "plain"), "--task", "ood", "--scores", "energy"]) == 2
    assert "unknown OOD score" in capsys.readouterr().err
    assert main(["eval", str(runs / "plain"), "--task", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", str(runs / "plain"), "--task", "fid", "--extractor", "clip"]) == 2
    assert "clip" in capsys.readouterr().err
    assert main(["eval", str(runs / "plain"), "--task", "fid", "--extractor", "mnist"]) == 2
    assert "extractor_path" in capsys.readouterr().err
    assert main(["eval", str(runs / "cond"), "--task", "composition", "--labels", "3", "12"]) == 2
    assert "labels must lie" in capsys.readouterr().err
