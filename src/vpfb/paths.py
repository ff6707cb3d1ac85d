"""Gaussian homotopy paths x_t = μ(t) x̄ + σ(t) ε, with t from 0 (prior) to 1 (data).

Every path gives the conditional velocity u, the conditional score-time derivative γ = ∂ₜ log ρ(x|x̄,t) that the
Deep Ritz loss needs, and the drift f(t) and squared diffusion g²(t) that turn a potential into a log-density.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from vpfb.tensors import expand_like, flat_dot


@dataclass
class PathSample:
    """A point on the conditional path and what the losses need about it (docs/method.md §1)."""

    x_t: Tensor  # μ x̄ + σ ε
    eps: Tensor  # the prior noise ε
    u: Tensor  # conditional velocity μ̇ x̄ + σ̇ ε
    gamma: Tensor  # [N] ∂ₜ log ρ(x_t | x̄, t) = (σ̇/σ)(‖ε‖² − D) + (μ̇/σ) x̄·ε


@dataclass(frozen=True)
class Schedule:
    """A path's schedule at times t [N], computed once: μ, σ, their time derivatives, and what is built from them
    (docs/method.md §1)."""

    mu: Tensor
    sigma: Tensor
    d_mu: Tensor
    d_sigma: Tensor

    @property
    def f(self) -> Tensor:
        """Drift f = μ̇/μ of the equivalent diffusion (generative time)."""
        return self.d_mu / self.mu

    @property
    def half_g2_mu(self) -> Tensor:
        """½ g² μ = σ(μ̇σ − σ̇μ): finite on all of [0, 1], unlike g² itself."""
        return self.sigma * (self.d_mu * self.sigma - self.d_sigma * self.mu)

    @property
    def g2(self) -> Tensor:
        """Squared diffusion g² = 2σ(μ̇σ − σ̇μ)/μ, so that v* = f x + ½ g² ∇log ρ̄ₜ."""
        return 2 * self.half_g2_mu / self.mu

    @property
    def variance(self) -> Tensor:
        """v = μ² + σ²: the marginal variance when the (standardised) data is N(0, I)."""
        return self.mu**2 + self.sigma**2

    @property
    def d_variance(self) -> Tensor:
        """v̇ = 2(μμ̇ + σσ̇)."""
        return 2 * (self.mu * self.d_mu + self.sigma * self.d_sigma)

    def log_density_of(self, phi: Tensor, x: Tensor) -> Tensor:
        """log ρ̄ₜ(x) + C(t) = (2Φ − f‖x‖²)/g², read from the potential's value Φ at (x, t)."""
        return (2 * phi - self.f * flat_dot(x, x)) / self.g2


class GaussianPath:
    """Base class: subclasses define μ(t) and σ(t); their derivatives default to one forward-mode pass."""

    def mu(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(μ̇, σ̇) at t, by forward-mode autodiff (t may be an expanded view, which jvp cannot take)."""
        t = t.contiguous()
        return torch.func.jvp(lambda s: (self.mu(s), self.sigma(s)), (t,), (torch.ones_like(t),))[1]

    def at(self, t: Tensor) -> Schedule:
        """The schedule at t [N]."""
        return Schedule(self.mu(t), self.sigma(t), *self.derivatives(t))

    def sample(self, x_bar: Tensor, t: Tensor, eps: Tensor | None = None) -> PathSample:
        """Draw x_t ~ ρ(·|x̄, t) and return it with u and γ."""
        if eps is None:
            eps = torch.randn_like(x_bar)
        s = self.at(t)
        e = lambda a: expand_like(a, x_bar)  # noqa: E731
        x_t = e(s.mu) * x_bar + e(s.sigma) * eps
        u = e(s.d_mu) * x_bar + e(s.d_sigma) * eps
        dim = x_bar[0].numel()
        gamma = (s.d_sigma / s.sigma) * (flat_dot(eps, eps) - dim) + (s.d_mu / s.sigma) * flat_dot(x_bar, eps)
        return PathSample(x_t=x_t, eps=eps, u=u, gamma=gamma)

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

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), torch.full_like(t, -(1 - self.sigma_min))

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
