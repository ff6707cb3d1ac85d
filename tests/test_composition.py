"""Composed potentials: gradients are the weighted sums of the parts; every sampler accepts them."""

import pytest
import torch

from vpfb.config import load_config
from vpfb.energy import CombinedPotential
from vpfb.evaluation.composition import average, guide, negate
from vpfb.fit import fit
from vpfb.potentials import velocity

STEPS = [
    "train.steps=6",
    "train.batch_size=8",
    "train.sample_every=0",
    "train.checkpoint_every=3",
    "model.conditional=true",
    "train.ema=0.0",
    "train.warmup_steps=0",
    "train.lr=0.01",
]


@pytest.fixture(scope="module")
def model():
    return fit(load_config("digits-cpu", STEPS), progress_bar=False)


def test_weights():
    assert average([1, 2], [1.0, 3.0]) == {1: 0.25, 2: 0.75}
    assert negate(4, 9, 0.3) == {4: 1.3, 9: -0.3}
    with pytest.raises(ValueError):
        average([1, 2], [1.0])
    with pytest.raises(ValueError, match="two different"):
        negate(4, 4)


def test_composed_gradient_is_the_weighted_sum(model):
    x, t = torch.randn(3, 1, 8, 8), 0.6
    combo = average([2, 5], [1.0, 3.0])
    expected = 0.25 * model.velocity(x, t, labels=2) + 0.75 * model.velocity(x, t, labels=5)
    assert torch.allclose(model.velocity(x, t, labels=combo), expected, atol=1e-5)
    phi = 0.25 * model.potential(x, t, labels=2) + 0.75 * model.potential(x, t, labels=5)
    assert torch.allclose(model.potential(x, t, labels=combo), phi, atol=1e-5)
    guided = model.velocity(x, t, labels=guide(model, 3, 2.0))
    null, cond = model.velocity(x, t, labels=10), model.velocity(x, t, labels=3)
    assert torch.allclose(guided, null + 2.0 * (cond - null), atol=1e-4)


def test_samplers_accept_compositions(model):
    combo = negate(1, 7)
    assert model.sample(2, solver="euler", steps=3, labels=combo).shape == (2, 1, 8, 8)
    assert model.log_density(torch.randn(2, 1, 8, 8), labels=combo).shape == (2,)
    # an explicit energy: Metropolis-corrected chains on the composition, from given points or annealed from the prior
    for x0 in (torch.randn(2, 1, 8, 8), None):
        out = model.langevin(2, steps=10, x0=x0, labels=combo)
        assert out.x.shape == (2, 1, 8, 8) and torch.isfinite(out.x).all() and len(out.acceptance) == 2


def test_generic_combination_and_errors(model):
    f = lambda x, t: (x**2).sum(1)  # noqa: E731
    g = lambda x, t: x.sum(1)  # noqa: E731
    combo = CombinedPotential([f, g], [2.0, -1.0])
    x = torch.randn(4, 3)
    assert torch.allclose(velocity(combo, x, torch.zeros(4)), 4 * x - 1)
    with pytest.raises(ValueError, match="one weight per potential"):
        CombinedPotential([f], [1.0, 2.0])
    with pytest.raises(ValueError, match="must sum to 1"):
        CombinedPotential([f, g], [1.0, 1.0])


def test_a_combination_is_the_weighted_product_of_the_experts(model):
    """Σ wₖΦ(·|cₖ) and Σ wₖ log ρ(·|cₖ) with the composition's weights: a dropped or unnormalised weight fails."""
    x, t = torch.randn(3, 1, 8, 8), 0.6
    for labels in (average([2, 7], [1.0, 3.0]), negate(4, 9, 0.5)):
        phi = sum(w * model.potential(x, t, labels=c) for c, w in labels.items())
        log_rho = sum(w * model.log_density(x, t, labels=c) for c, w in labels.items())
        torch.testing.assert_close(model.potential(x, t, labels=labels), phi)
        torch.testing.assert_close(model.log_density(x, t, labels=labels), log_rho)
        assert not torch.allclose(log_rho, model.log_density(x, t, labels=list(labels)[0]))
    with pytest.raises(ValueError, match="labels must lie"):
        model.sample(2, solver="euler", steps=2, labels=average([3, 12]))
    unconditional = fit(load_config("digits-cpu", STEPS[:4]), progress_bar=False)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.sample(2, solver="euler", steps=2, labels=average([1, 2]))
    with pytest.raises(ValueError, match="conditional model"):
        guide(unconditional, 1, 2.0)
