import pytest
import torch

from vpfb.likelihood import divergence
from vpfb.parameterisation import DirectPotential, EnergyPotential
from vpfb.paths import LinearPath, LogHomotopyPath
from vpfb.potentials import MLPPotential, potential_and_velocity, value_and_grad


def potentials():
    torch.manual_seed(0)
    yield "mlp", MLPPotential(3, hidden=16, depth=3)
    yield "autonomous", MLPPotential(3, hidden=16, depth=2, time_varying=False)
    yield "energy", EnergyPotential(MLPPotential(3, hidden=16, depth=2), LinearPath())
    yield "energy-loghom", EnergyPotential(MLPPotential(3, hidden=16, depth=2), LogHomotopyPath(nu=0.1))
    yield "direct", DirectPotential(MLPPotential(3, hidden=16, depth=2), LinearPath(0.1))
    yield "autograd", AutogradOnly(MLPPotential(3, hidden=16, depth=2))


class AutogradOnly(torch.nn.Module):
    """A potential without its own `value_and_velocity`: autograd differentiates it."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t)


@pytest.mark.parametrize("rows", [None, 20])
@pytest.mark.parametrize("name,potential", list(potentials()), ids=lambda v: v if isinstance(v, str) else "")
def test_written_out_gradient_equals_autograd_to_second_order(name, potential, rows):
    """Φ at all 32 points, ∇Φ at the first `rows`, and the gradients of a loss on both, against autograd."""
    potential.double()
    x, t = torch.randn(32, 3, dtype=torch.float64), torch.rand(32, dtype=torch.float64)
    phi, v = potential_and_velocity(potential, x, t, create_graph=True, rows=rows)
    phi_ref, v_ref = value_and_grad(lambda y: potential(y, t), x, create_graph=True)
    v_ref = v_ref[:rows]
    assert v.shape == v_ref.shape == (rows or 32, 3)
    torch.testing.assert_close(phi, phi_ref)
    torch.testing.assert_close(v, v_ref)
    u = torch.randn_like(v)
    params = list(potential.parameters())
    loss = lambda p, g: (0.5 * (g * g).sum(1) - (g * u).sum(1)).mean() + 0.3 * p.mean()  # noqa: E731
    grads = torch.autograd.grad(loss(phi, v), params, allow_unused=True, materialize_grads=True)
    grads_ref = torch.autograd.grad(loss(phi_ref, v_ref), params, allow_unused=True, materialize_grads=True)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    xs = x.clone().requires_grad_(True)
    lap = divergence(potential_and_velocity(potential, xs, t, create_graph=True)[1], xs)
    xr = x.clone().requires_grad_(True)
    lap_ref = divergence(value_and_grad(lambda y: potential(y, t), xr, create_graph=True)[1], xr)
    torch.testing.assert_close(lap, lap_ref)


def test_potential_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        MLPPotential(3)(torch.randn(4, 2), torch.rand(4))
    with pytest.raises(ValueError, match="positive"):
        MLPPotential(3, hidden=0)


def test_velocity_without_graph_is_detached():
    potential = EnergyPotential(MLPPotential(2, hidden=8, depth=1), LinearPath())
    _, v = potential_and_velocity(potential, torch.randn(4, 2), torch.rand(4))
    assert not v.requires_grad
