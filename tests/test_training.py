"""A trained potential against docs/method.md §8: correlated Gaussian data, so the network has to learn something."""

import pytest
import torch
from conftest import GaussianTruth

from vpfb.config import ConfigError, load_config
from vpfb.fit import fit
from vpfb.likelihood import grid_log_normaliser
from vpfb.paths import LinearPath

M = torch.tensor([1.0, -0.5])
COV = torch.tensor([[0.25, 0.8], [0.8, 4.0]])  # correlation 0.8, survives per-column standardisation


def fit_on_gaussian(overrides: list[str] = ()):
    """A 2 × 128 MLP fitted for 3,000 steps on N(M, COV) (defaults, then `overrides`); returns the model and the
    closed form of the data in the units the model trains in, z = (x − mean)/std: N((M − mean)/std, D⁻¹ΣD⁻¹)."""
    torch.manual_seed(0)
    data = GaussianTruth(LinearPath(), M, cov=COV).sample_data(50_000)
    cfg = load_config(
        None,
        ["model.hidden=128", "model.depth=2", "train.steps=3000", "train.lr=0.003", "train.batch_size=512", *overrides],
    )
    model = fit(cfg, points=data, progress_bar=False)
    st = model.standardizer
    return model, GaussianTruth(model.path, (M - st.mean) / st.std, cov=COV / torch.outer(st.std, st.std))


def relative_velocity_error(model, truth: GaussianTruth, t: float, n: int = 4000) -> float:
    """Relative RMS error of the model's ∇Φ against the closed-form velocity on n samples of ρ̄ₜ."""
    z = truth.sample_marginal(n, t)
    v_model = model.velocity(model.standardizer.inverse(z), t) / model.standardizer.std
    v_true = truth.velocity(z, torch.full((n,), t))
    return ((v_model - v_true).square().sum(1).mean() / v_true.square().sum(1).mean()).sqrt().item()


@pytest.fixture(scope="module")
def trained():
    """The default recipe (late times weighted up by the clipped-SNR weight)."""
    return fit_on_gaussian()


@pytest.fixture(scope="module")
def trained_uniform():
    """Uniform time weight: every t counts alike, so the velocity is accurate everywhere."""
    return fit_on_gaussian(["loss.weight=uniform"])


@pytest.mark.slow
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_trained_velocity_matches_the_analytic_velocity(trained_uniform, t):
    """Relative RMS error of ∇Φ below 5% on samples of ρ̄ₜ."""
    rel = relative_velocity_error(*trained_uniform, t)
    assert rel < 0.05, f"relative velocity error {rel:.3f} at t={t}"


@pytest.mark.slow
@pytest.mark.parametrize("t", [0.3, 0.6])
def test_log_density_matches_analytic_up_to_a_constant(trained, t):
    """ψ − log ρ̄ₜ is constant on ρ̄ₜ's samples: its standard deviation is below 0.05 nats."""
    model, truth = trained
    z = truth.sample_marginal(4000, t)
    tt = torch.full((4000,), t)
    with torch.no_grad():
        gap = model.phi.log_density(z, tt) - truth.log_density(z, tt)
    assert gap.std() < 0.05, f"log-density error spread {gap.std():.3f} nats at t={t}"
    assert truth.log_density(z, tt).std() > 0.5  # the comparison is not trivial


@pytest.mark.slow
def test_energy_is_a_good_density_of_the_data(trained):
    """KL(data ‖ normalised exp(log_density)) at the default read-out time is below 0.05 nats (grid-normalised)."""
    model, truth = trained
    x = model.standardizer.inverse(truth.sample_marginal(4000, 1.0))
    log_z = grid_log_normaliser(model.log_density, x.min(0).values - 3, x.max(0).values + 3, 300)
    exact = GaussianTruth(LinearPath(), M, cov=COV).log_density(x, torch.ones(4000))
    kl = (exact - (model.log_density(x) - log_z)).mean()
    assert -0.01 < kl < 0.05, f"KL {kl:.3f}"


@pytest.mark.slow
def test_cnf_likelihood_of_trained_model_is_near_the_truth(trained):
    model, truth = trained
    z = truth.sample_marginal(500, 1.0)
    x = model.standardizer.inverse(z)
    exact = truth.log_density(z, torch.ones(500)) - model.standardizer.log_abs_det()
    assert abs((model.log_likelihood(x) - exact).mean()) < 0.03


def test_a_conditional_model_of_points_is_refused_before_training():
    cfg = load_config(None, ["model.conditional=true", "train.steps=1"])
    with pytest.raises(ConfigError, match="points have none"):
        fit(cfg, points=torch.randn(64, 2), progress_bar=False)
