import math

import pytest
import torch
from conftest import GaussianTruth

from vpfb.paths import GaussianPath, LinearPath, LogHomotopyPath, Schedule, build_path

PATHS = [LinearPath(), LinearPath(sigma_min=0.05), LogHomotopyPath(omega=1.0, nu=0.1)]


def conditional_log_density(path, x, x_bar, t):
    mu, sigma = path.mu(t).reshape(-1, 1), path.sigma(t).reshape(-1, 1)
    d = x.shape[1]
    return (
        -((x - mu * x_bar) ** 2).sum(1) / (2 * sigma[:, 0] ** 2)
        - d * torch.log(sigma[:, 0])
        - 0.5 * d * math.log(2 * math.pi)
    )


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_gamma_is_time_derivative_of_conditional_log_density(path):
    x_bar = torch.randn(64, 3, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.98 + 0.01
    s = path.sample(x_bar, t)
    tt = t.clone().requires_grad_(True)
    logp = conditional_log_density(path, s.x_t, x_bar, tt)
    (dlogp_dt,) = torch.autograd.grad(logp.sum(), tt)
    torch.testing.assert_close(s.gamma, dlogp_dt)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_u_is_time_derivative_of_x_t(path):
    x_bar, eps = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) * 0.98 + 0.01
    x_t = lambda tt: path.sample(x_bar, tt, eps).x_t  # noqa: E731
    _, dx_dt = torch.func.jvp(x_t, (t,), (torch.ones_like(t),))
    torch.testing.assert_close(path.sample(x_bar, t, eps).u, dx_dt)


def test_gamma_is_centred():
    path = LinearPath()
    x_bar = torch.randn(1, 4).expand(200_000, 4)
    gamma = path.sample(x_bar, torch.full((200_000,), 0.7)).gamma
    assert abs(gamma.mean()) < 4 * gamma.std() / math.sqrt(gamma.numel())
    assert gamma.std() > 1  # not trivially zero


def test_log_homotopy_reduces_to_linear_path():
    nu = 0.3
    path = LogHomotopyPath(omega=1.0, nu=nu, alpha=lambda t: 1 / (1 - t), beta=lambda t: nu**2 * t / (1 - t) ** 2)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    lin = LinearPath()
    generic = Schedule(lin.mu(t), lin.sigma(t), *GaussianPath.derivatives(lin, t))  # jvp, not the closed form
    for name in ("mu", "sigma", "d_mu", "d_sigma", "f", "g2", "half_g2_mu", "variance", "d_variance"):
        torch.testing.assert_close(getattr(path.at(t), name), getattr(lin.at(t), name))
        torch.testing.assert_close(getattr(generic, name), getattr(lin.at(t), name))


def test_log_homotopy_endpoints():
    path = LogHomotopyPath(omega=2.0, nu=0.1)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(path.mu(t), torch.tensor([0.0, 4.0 / 4.01], dtype=torch.float64))
    torch.testing.assert_close(path.sigma(t), torch.tensor([2.0, (1 / 4 + 100) ** -0.5], dtype=torch.float64))


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_velocity_is_drift_plus_half_g2_score(path):
    """v* = f x + ½ g² ∇log ρ̄ₜ for Gaussian data, the identity behind every log-density read-out."""
    truth = GaussianTruth(path, [1.0, -0.5], [0.5, 2.0])
    x = torch.randn(32, 2)
    t = torch.rand(32) * 0.9 + 0.05
    xg = x.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(truth.log_density(xg, t).sum(), xg)
    s = path.at(t)
    rhs = s.f[:, None] * x + 0.5 * s.g2[:, None] * score
    torch.testing.assert_close(truth.velocity(x, t), rhs, rtol=1e-4, atol=1e-4)


def test_bad_path_arguments():
    with pytest.raises(ValueError, match="sigma_min"):
        LinearPath(sigma_min=1.0)
    with pytest.raises(ValueError, match="positive"):
        LogHomotopyPath(nu=0.0)
    with pytest.raises(ValueError, match="unknown path"):
        build_path("cosine")
