"""Long runs: SGLD on a Gaussian Φ_B reaches its mean and variance; the ODE follows ∇Φ; diagnostics and errors."""

import math

import pytest
import torch

from vpfb.evaluation.longrun import long_run

M = torch.tensor([1.0, -2.0])


def gaussian_potential(x, t):
    """Φ(x, 1) = (‖x‖² − ‖x − m‖²/s²)/4 with s = 1, so that Φ_B = 4Φ − ‖x‖² = −‖x − m‖²: the law N(m, ½ I)."""
    return ((x**2).sum(1) - ((x - M) ** 2).sum(1)) / 4


def test_sgld_on_a_gaussian_boltzmann_energy_reaches_its_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 2, generator=g)
    run = long_run(gaussian_potential, x0, "sgld", t_end=10.0, step_size=0.01, generator=g)
    x = run.snapshots[-1]
    assert torch.allclose(x.mean(0), M, atol=0.04)
    # ULA's variance for N(m, v): v / (1 − h/(2v)) → 0.5/(1 − 0.01) ≈ 0.505
    assert torch.allclose(x.var(0), torch.full((2,), 0.5), atol=0.04)
    hot = long_run(gaussian_potential, x0, "sgld", t_end=10.0, step_size=0.01, temperature=2.0, generator=g)
    assert torch.allclose(hot.snapshots[-1].var(0), torch.full((2,), 1.0), atol=0.08)


def test_ode_follows_the_gradient_and_diagnostics_are_recorded():
    x0 = torch.zeros(3, 2)
    run = long_run(gaussian_potential, x0, "ode", t_end=1.0, step_size=0.01, records=3)
    # ∇Φ = m/2 everywhere (the quadratic terms cancel): x(t) = t m / 2
    assert torch.allclose(run.snapshots[-1], (M / 2).expand(3, 2), atol=1e-5)
    assert torch.allclose(run.times, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(run.mean_grad_sq, torch.full((3,), (M**2).sum().item() / 4))


def test_released_chain_moves_at_a_fixed_speed_and_errors():
    g = torch.Generator().manual_seed(1)
    run = long_run(
        gaussian_potential,
        torch.randn(8, 2, generator=g),
        "released",
        t_end=0.02,
        step_size=0.02,
        noise_scale=0.0,
        records=2,
    )
    step = (run.snapshots[1] - run.snapshots[0]).norm(dim=1)
    assert torch.allclose(step, torch.full((8,), 0.02 * 0.5 * math.sqrt(2)))  # h·w·√D with the noise off
    with pytest.raises(ValueError, match="unknown long-run method"):
        long_run(gaussian_potential, torch.zeros(2, 2), "hmc")
    with pytest.raises(ValueError, match="records − 1 dividing the 100 steps"):
        long_run(gaussian_potential, torch.zeros(2, 2), "ode", t_end=1.0, step_size=0.01, records=4)
