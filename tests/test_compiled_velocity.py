"""CompiledVelocity: Φ and ∇ₓΦ from one compiled torch.func.grad_and_value give the eager values, the eager
second-order parameter gradients of the Ritz loss, and the same training run. The `aot_eager` backend traces
exactly what inductor would compile (the graph of Φ and its gradient, and that graph's backward) in seconds."""

import pytest
import torch
from test_image_potentials import TINY, images, randomise

from vpfb.config import TrainConfig
from vpfb.losses import DeepRitzLoss
from vpfb.parameterisation import DirectPotential, EnergyPotential
from vpfb.paths import LinearPath
from vpfb.potentials import AEEnergy, CompiledVelocity, MLPPotential, UNet, potential_and_velocity
from vpfb.training import train

CASES = {  # name: (potential factory, data)
    "energy-mlp": (
        lambda: EnergyPotential(randomise(MLPPotential(3, hidden=16, depth=2)), LinearPath()),
        lambda: torch.randn(64, 3),
    ),
    "direct-ae-unet": (lambda: DirectPotential(randomise(AEEnergy(UNet(**TINY))), LinearPath()), lambda: images(n=6)),
}


def ritz_gradients(potential, parameters, x, estimator):
    torch.manual_seed(1)
    out = DeepRitzLoss(LinearPath(), estimator=estimator)(potential, x)
    return out.loss.detach(), torch.autograd.grad(out.loss, parameters, materialize_grads=True)


@pytest.mark.parametrize("name", CASES)
def test_compiled_value_velocity_and_second_order_gradients_equal_eager(name):
    make, data = CASES[name]
    torch.manual_seed(0)
    potential, x = make().double(), data().double()  # float64: the reordered sums agree to ~1e-12
    compiled = CompiledVelocity(potential, backend="aot_eager")
    t = torch.rand(len(x), dtype=x.dtype)
    expected, got = (potential_and_velocity(p, x, t, create_graph=True) for p in (potential, compiled))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)
    parameters = list(potential.parameters())
    for estimator in ("pathwise", "covariance"):  # the covariance form also differentiates Φ itself
        (loss, grads), (loss_c, grads_c) = (ritz_gradients(p, parameters, x, estimator) for p in (potential, compiled))
        torch.testing.assert_close(loss_c, loss, rtol=1e-9, atol=1e-10)
        for e, g in zip(grads, grads_c):
            torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)


def test_compiled_velocity_of_the_first_rows_equals_eager():
    torch.manual_seed(0)
    potential = CASES["energy-mlp"][0]().double()
    compiled = CompiledVelocity(potential, backend="aot_eager")
    x, t = torch.randn(40, 3, dtype=torch.float64), torch.rand(40, dtype=torch.float64)
    (phi, v), (phi_c, v_c) = (
        potential_and_velocity(p, x, t, create_graph=True, rows=25) for p in (potential, compiled)
    )
    assert v_c.shape == (25, 3)
    torch.testing.assert_close(phi_c, phi, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(v_c, v, rtol=1e-9, atol=1e-10)


def test_compiled_velocity_reads_everything_else_from_the_potential():
    potential = CASES["energy-mlp"][0]()
    compiled = CompiledVelocity(potential, backend="aot_eager")
    x, t = torch.randn(5, 3), torch.rand(5)
    assert compiled.path is potential.path
    torch.testing.assert_close(compiled.log_density(x, t), potential.log_density(x, t))
    torch.testing.assert_close(compiled(x, t), potential(x, t))


def test_training_with_compile_follows_the_eager_run(monkeypatch):
    import vpfb.training.trainer as trainer

    calls = []
    monkeypatch.setattr(
        trainer,
        "CompiledVelocity",
        lambda potential: calls.append(1) or CompiledVelocity(potential, backend="aot_eager"),
    )
    losses = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        path = LinearPath()
        potential = EnergyPotential(MLPPotential(2, hidden=16, depth=2), path)
        result = train(
            potential,
            DeepRitzLoss(path),
            torch.randn(256, 2),
            TrainConfig(steps=6, batch_size=32, log_every=1, compile=compile_),
            progress_bar=False,
        )
        losses.append([row["loss"] for row in result.history])
    assert calls == [1]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
