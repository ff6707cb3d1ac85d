"""Gaussian homotopy paths x_t = μ(t) x̄ + σ(t) ε, with t from 0 (prior) to 1 (data).

Every path gives the conditional velocity u, the conditional score-time derivative γ = ∂ₜ log ρ(x|x̄,t) that the
Deep Ritz loss needs, and the drift f(t) and squared diffusion g²(t) that turn a potential into a log-density.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class PathSample:
    """A point on the conditional path and what the losses need about it (docs/method.md §1)."""

    x_t: Tensor  # μ x̄ + σ ε
    eps: Tensor  # the prior noise ε
    u: Tensor  # conditional velocity μ̇ x̄ + σ̇ ε
    gamma: Tensor  # [N] ∂ₜ log ρ(x_t | x̄, t) = (σ̇/σ)(‖ε‖² − D) + (μ̇/σ) x̄·ε


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """View a per-sample time [N] as [N, 1, ..., 1] so it broadcasts against x [N, ...]."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def flat_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all non-batch dimensions."""
    return (a * b).flatten(1).sum(1)


def _time_derivative(fn, t: Tensor) -> Tensor:
    """d fn / dt by forward-mode autodiff (t may be an expanded view, which jvp cannot take)."""
    t = t.contiguous()
    return torch.func.jvp(fn, (t,), (torch.ones_like(t),))[1]


class GaussianPath:
    """Base class: subclasses define μ(t) and σ(t); derivatives default to forward-mode autodiff."""

    def mu(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_mu(self, t: Tensor) -> Tensor:
        return _time_derivative(self.mu, t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return _time_derivative(self.sigma, t)

    def sample(self, x_bar: Tensor, t: Tensor, eps: Tensor | None = None) -> PathSample:
        """Draw x_t ~ ρ(·|x̄, t) and return it with u and γ."""
        if eps is None:
            eps = torch.randn_like(x_bar)
        mu, sigma = self.mu(t), self.sigma(t)
        d_mu, d_sigma = self.d_mu(t), self.d_sigma(t)
        e = lambda s: expand_like(s, x_bar)  # noqa: E731
        x_t = e(mu) * x_bar + e(sigma) * eps
        u = e(d_mu) * x_bar + e(d_sigma) * eps
        dim = x_bar[0].numel()
        gamma = (d_sigma / sigma) * (flat_dot(eps, eps) - dim) + (d_mu / sigma) * flat_dot(x_bar, eps)
        return PathSample(x_t=x_t, eps=eps, u=u, gamma=gamma)

    def f(self, t: Tensor) -> Tensor:
        """Drift f = μ̇/μ of the equivalent diffusion (generative time)."""
        return self.d_mu(t) / self.mu(t)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g² = 2σ(μ̇σ − σ̇μ)/μ, so that v* = f x + ½ g² ∇log ρ̄ₜ."""
        return 2 * self.half_g2_mu(t) / self.mu(t)

    def log_density_of(self, phi: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """log ρ̄ₜ(x) + C(t) = (2Φ − f‖x‖²)/g², read from the potential's value Φ at (x, t)."""
        return (2 * phi - self.f(t) * flat_dot(x, x)) / self.g2(t)

    def half_g2_mu(self, t: Tensor) -> Tensor:
        """½ g² μ = σ(μ̇σ − σ̇μ): finite on all of [0, 1], unlike g² itself."""
        mu, sigma = self.mu(t), self.sigma(t)
        return sigma * (self.d_mu(t) * sigma - self.d_sigma(t) * mu)

    def reference_variance(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """v(t) = μ² + σ² and v̇: the marginal variance when the (standardised) data is N(0, I)."""
        mu, sigma = self.mu(t), self.sigma(t)
        return mu**2 + sigma**2, 2 * (mu * self.d_mu(t) + sigma * self.d_sigma(t))

    def config(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if isinstance(v, (int, float)))
        return f"{type(self).__name__}({args})"


class LinearPath(GaussianPath):
    """μ = t, σ = 1 − (1 − σ_min) t: the flow-matching path (the authors' released code uses σ_min = 0)."""

    def __init__(self, sigma_min: float = 0.0):
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def mu(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.sigma_min) * t

    def d_mu(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1 - self.sigma_min))

    def config(self) -> dict:
        return {"name": "linear", "sigma_min": self.sigma_min}


class LogHomotopyPath(GaussianPath):
    """The paper's log-homotopy h = α(t) log N(x; 0, ω²I) + β(t) log N(x̄; x, ν²I), a Gaussian in x with

    μ = βω² / (αν² + βω²) and σ² = 1 / (α/ω² + β/ν²). The default α = 1, β = t tempers the data-recovery
    likelihood (prior × likelihood^t); α = 1/(1−t), β = ν²t/(1−t)², ω = 1 recovers the linear path.
    """

    def __init__(
        self,
        omega: float = 1.0,
        nu: float = 0.01,
        alpha: Callable[[Tensor], Tensor] | None = None,
        beta: Callable[[Tensor], Tensor] | None = None,
    ):
        if omega <= 0 or nu <= 0:
            raise ValueError(f"omega and nu must be positive, got omega={omega}, nu={nu}")
        self.omega, self.nu = float(omega), float(nu)
        self.alpha = alpha if alpha is not None else torch.ones_like
        self.beta = beta if beta is not None else (lambda t: t)
        self._custom = alpha is not None or beta is not None

    def mu(self, t: Tensor) -> Tensor:
        a, b = self.alpha(t) * self.nu**2, self.beta(t) * self.omega**2
        return b / (a + b)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.rsqrt(self.alpha(t) / self.omega**2 + self.beta(t) / self.nu**2)

    def config(self) -> dict:
        if self._custom:
            raise ValueError("a LogHomotopyPath with custom alpha/beta functions cannot be saved by name")
        return {"name": "log_homotopy", "omega": self.omega, "nu": self.nu}


PATHS = {"linear": LinearPath, "log_homotopy": LogHomotopyPath}


def build_path(name: str = "linear", **kwargs) -> GaussianPath:
    """Build a path from its config name and keyword arguments."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; choose one of {sorted(PATHS)}")
    return PATHS[name](**kwargs)
