import json
import math

import pytest
import torch

from vpfb import load
from vpfb.config import Config
from vpfb.data import Standardizer
from vpfb.factory import build_potential
from vpfb.model import EnergyModel


def small_model(scale=1.0, shift=0.0):
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.hidden, cfg.model.depth = 16, 2
    st = Standardizer(torch.tensor([0.5, -1.0]) * scale + shift, torch.tensor([2.0, 0.5]) * scale)
    return EnergyModel(build_potential(cfg, 2), cfg, st)


def test_save_and_load_round_trip(tmp_path):
    model = small_model()
    model.save(tmp_path / "run")
    again = load(tmp_path / "run")
    x = torch.randn(8, 2)
    torch.testing.assert_close(again.log_density(x), model.log_density(x))
    torch.testing.assert_close(again.velocity(x, 0.3), model.velocity(x, 0.3))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(
        again.sample(5, solver="euler", steps=4, generator=g()), model.sample(5, solver="euler", steps=4, generator=g())
    )


def test_user_units_are_consistent():
    """Scaling the data by c scales samples by c and shifts log-likelihoods by −D log c."""
    a, b = small_model(), small_model(scale=10.0)
    x = torch.randn(16, 2)
    torch.testing.assert_close(b.log_likelihood(10 * x), a.log_likelihood(x) - 2 * math.log(10), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.log_density(10 * x), a.log_density(x) - 2 * math.log(10))
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    torch.testing.assert_close(b.sample(32, generator=g()), 10 * a.sample(32, generator=g()), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.velocity(10 * x, 0.5), 10 * a.velocity(x, 0.5))


def test_model_methods_shapes():
    model = small_model()
    x = torch.randn(7, 2)
    for out in (model.potential(x), model.log_density(x, 0.5), model.boltzmann(x, t=0.9), model.log_likelihood(x)):
        assert out.shape == (7,) and torch.isfinite(out).all()
    assert model.sample_langevin(5, steps=3, metropolis=True).shape == (5, 2)
    sol = model.flow(6, solver="heun", steps=5, save=6)
    assert sol.trajectory.shape == (6, 6, 2) and sol.nfe == 10


@pytest.mark.parametrize("parameterisation,sigma_min", [("energy", 0.0), ("energy", 0.05), ("direct", 0.0)])
def test_boltzmann_depends_on_the_weights_or_refuses(parameterisation, sigma_min):
    """Under the energy parameterisation on the σ_min = 0 path Φ(x, 1) = ½‖x‖² for any weights, so Φ_B is refused;
    wherever it is offered, other weights give another Φ_B."""
    cfg = Config()
    cfg.model.hidden, cfg.model.depth, cfg.model.parameterisation = 16, 2, parameterisation
    cfg.path.sigma_min = sigma_min
    x = torch.randn(7, 2)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(EnergyModel(build_potential(cfg, 2), cfg, Standardizer(torch.zeros(2), torch.ones(2))))
    if parameterisation == "energy" and sigma_min == 0:
        assert not models[0].boltzmann_is_informative()
        with pytest.raises(ValueError, match="Φ_B is blind for this model"):
            models[0].boltzmann(x)
        with pytest.raises(ValueError, match="Φ_B is blind"):
            models[0].sample_langevin(5, steps=3, target="boltzmann")
        assert models[0].boltzmann_is_informative(0.9)
        t = 0.9
    else:
        assert models[0].boltzmann_is_informative()
        assert models[0].sample_langevin(5, steps=3, target="boltzmann").shape == (5, 2)
        t = 1.0
    assert (models[0].boltzmann(x, t) - models[1].boltzmann(x, t)).abs().max() > 1e-3


def test_bad_inputs_get_clear_errors():
    model = small_model()
    with pytest.raises(ValueError, match="dimension 2"):
        model.log_density(torch.randn(4, 3))
    with pytest.raises(ValueError, match="dimension 2"):
        model.velocity(torch.randn(4), 0.5)
    with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
        model.log_likelihood(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="t must lie"):
        model.log_density(torch.randn(4, 2), t=1.5)
    with pytest.raises(ValueError, match="Langevin target"):
        model.sample_langevin(4, target="score")


def test_missing_or_corrupt_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        load(tmp_path / "empty")
    run = tmp_path / "run"
    small_model().save(run)
    weights = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load(run)
    (run / "model.safetensors").write_bytes(weights)
    meta = json.loads((run / "model.json").read_text())
    meta["config"]["model"]["hidden"] = 32
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match the architecture"):
        load(run)
    (run / "model.json").write_text("{ not json")
    with pytest.raises(ValueError, match="corrupt"):
        load(run)


def test_a_flipped_bit_or_broken_statistics_are_refused_on_load(tmp_path):
    run = tmp_path / "run"
    small_model().save(run)
    weights = bytearray((run / "model.safetensors").read_bytes())
    weights[-3] ^= 0x40  # one exponent bit of the last float: loads fine, computes nonsense
    (run / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ValueError, match="checksum differs"):
        load(run)
    small_model().save(run)
    meta = json.loads((run / "model.json").read_text())
    meta["standardizer"]["mean"][0] = float("inf")
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="statistics are not finite"):
        load(run)


def test_sample_counts_must_be_positive():
    model = small_model()
    for n in (0, -5, 2.5):
        with pytest.raises(ValueError, match="positive number of samples"):
            model.sample(n)


@pytest.mark.parametrize("dim,calibrate", [(2, True), (6, False)])
def test_fit_leaves_the_configuration_as_validated(tmp_path, dim, calibrate):
    """fit neither rewrites the user's configuration nor the run's config.yaml: the partition weight stays "auto"
    (on for 2-D points, off for 6-D ones, whose importance sampling fails) and the calibrated read-out time lives in
    the model (model.json), not in eval.density_t."""
    import copy

    import yaml

    from vpfb.config import load_config
    from vpfb.factory import partition_weight
    from vpfb.fit import fit

    cfg = load_config(
        "toy2d",
        [
            "train.steps=3",
            "train.batch_size=16",
            "model.hidden=16",
            "eval.calibrate_points=64",
            f"eval.calibrate={str(calibrate).lower()}",
            "eval.calibrate_times=[0.8, 0.95]",
        ],
    )
    before = copy.deepcopy(cfg.to_dict())
    model = fit(cfg, tmp_path, torch.randn(128, dim), progress_bar=False)
    assert cfg.to_dict() == before and yaml.safe_load((tmp_path / "config.yaml").read_text()) == before
    assert partition_weight(cfg, dim) == (0.03 if dim == 2 else 0.0)
    assert (model.read_out_t in (0.8, 0.95)) == calibrate and cfg.eval.density_t == 0.9
    assert load(tmp_path).read_out_t == model.read_out_t
