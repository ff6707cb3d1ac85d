"""OOD metrics against scikit-learn's definitions, and scores from a model."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from vpfb.config import load_config
from vpfb.evaluation.ood import MultiscaleEnergy, ood_metrics, ood_scores, ood_table, score_sets
from vpfb.fit import fit


def test_perfect_separation_and_chance():
    perfect = ood_metrics(torch.linspace(1, 2, 100), torch.linspace(-2, -1, 50))
    assert perfect == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    g = torch.Generator().manual_seed(0)
    chance = ood_metrics(torch.randn(20000, generator=g), torch.randn(20000, generator=g))
    assert abs(chance["auroc"] - 0.5) < 0.01 and abs(chance["fpr95"] - 0.95) < 0.01
    reverse = ood_metrics(torch.zeros(10), torch.ones(10))
    assert reverse["auroc"] == 0.0 and reverse["fpr95"] == 1.0


def test_auroc_is_sklearns():
    g = torch.Generator().manual_seed(1)
    s_in, s_out = torch.randn(300, generator=g) + 0.7, torch.randn(200, generator=g)
    labels = [1] * 300 + [0] * 200
    assert ood_metrics(s_in, s_out)["auroc"] == pytest.approx(roc_auc_score(labels, torch.cat([s_in, s_out])))
    # FPR at 95% TPR by hand: the threshold keeping 95% of in-distribution scores
    threshold = s_in.sort().values[int(0.05 * 300)]
    assert ood_metrics(s_in, s_out)["fpr95"] == pytest.approx((s_out >= threshold).double().mean().item())


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics(torch.tensor([1.0, float("nan")]), torch.zeros(3))
    with pytest.raises(ValueError, match="both sets"):
        ood_metrics(torch.tensor([]), torch.zeros(3))


def test_a_gaussian_model_scores_far_points_lower(tmp_path):
    cfg = load_config("toy2d", ["train.steps=300", "model.hidden=32", "eval.calibrate=false"])
    model = fit(cfg, points=torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)), progress_bar=False)
    near = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    far = near + 6.0
    fitted = MultiscaleEnergy(model, torch.randn(500, 2, generator=torch.Generator().manual_seed(2)))
    for score in ("log_density", "likelihood", "grad_norm", fitted):
        s = ood_scores(model, torch.cat([near, far]), score, batch_size=64)
        assert s.shape == (400,) and s[:200].mean() > s[200:].mean(), score
    # ‖∇Φ‖ is read at the read-out t, where it depends on the model, not at t = 1, where ∇Φ(x, 1) = x for it
    x = torch.cat([near, far])
    blind = -(x - model.standardizer.mean).norm(dim=1)  # ∇Φ(z, 1) = z: in user units the velocity is x − mean
    assert torch.allclose(-model.velocity(x, 1.0).norm(dim=1), blind, rtol=1e-2)
    assert not torch.allclose(ood_scores(model, x, "grad_norm"), blind, rtol=1e-2)
    # the paper's Φ_B at t = 1 does not depend on the weights of this model (energy parameterisation, σ(1) = 0)
    with pytest.raises(ValueError, match="Φ_B is blind"):
        ood_scores(model, near, "boltzmann")
    rows = ood_table(model, near, {"shifted": far}, scores=("log_density",))
    assert rows[0]["auroc"] > 0.99
    with pytest.raises(ValueError, match="shape"):
        ood_table(model, near, {"3-d": torch.randn(5, 3)})
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood_scores(model, near, "energy")


class ProfileModel:
    """A stand-in with a known energy profile: ψ(x, t) = −‖x‖²/(2t) + t·x₁ and ∇Φ(x, t) = (1 + t)x."""

    dim = 2

    def log_density(self, x, t):
        return -(x**2).sum(1) / (2 * t) + t * x[:, 0]

    def velocity(self, x, t):
        return (1 + t) * x


def test_multiscale_energy_is_the_fitted_gaussian_of_the_profile():
    from scipy.stats import multivariate_normal

    model, times = ProfileModel(), (0.5, 0.9)
    g = torch.Generator().manual_seed(0)
    train = torch.randn(400, 2, generator=g)
    score = MultiscaleEnergy(model, train, times)
    f = lambda x: torch.stack(
        [
            c
            for t in times
            for c in (
                model.log_density(x, t) / 2,  # noqa: E731
                model.velocity(x, t).norm(dim=1) / 2**0.5,
            )
        ],
        1,
    ).double()
    features = f(train).numpy()
    cov = torch.cov(f(train).T).numpy()
    cov += 1e-3 * torch.diag(torch.from_numpy(cov).diagonal()).numpy()
    x = torch.randn(50, 2, generator=g) * 2
    expected = multivariate_normal(features.mean(0), cov).logpdf(f(x).numpy())
    got = score(model, x).numpy()
    assert (got - expected).std() < 1e-8 * abs(expected).mean()  # equal up to the normalising constant
    near = torch.randn(200, 2, generator=g)
    assert score(model, near).mean() > score(model, near + 3).mean()
    with pytest.raises(ValueError, match="training images"):
        MultiscaleEnergy(model, train[:4], times)


def test_a_complexity_score_reuses_the_score_it_corrects():
    """score_sets computes the CNF once for likelihood and likelihood_complexity, with the same numbers as alone."""
    calls = []

    class CountingModel:  # images of 1 × 1 × 2 pixels (png_bits reads images), log p = −‖x‖²/2
        shape, dim = (1, 1, 2), 2

        def log_likelihood(self, x, **kwargs):
            calls.append(len(x))
            return -(x.flatten(1) ** 2).sum(1) / 2

    model, x = CountingModel(), torch.rand(6, 1, 1, 2) * 2 - 1
    scored = score_sets(model, x, {"far": x + 1}, scores=("likelihood_complexity", "likelihood"))
    assert calls == [6, 6]  # once per set, not twice
    assert list(scored) == ["likelihood_complexity", "likelihood"]
    torch.testing.assert_close(
        scored["likelihood_complexity"]["far"], ood_scores(model, x + 1, "likelihood_complexity")
    )
