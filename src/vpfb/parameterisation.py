"""How a network becomes a potential Φ(x, t) with a readable log-density log ρ̄ₜ(x) (docs/method.md §3).

For any Gaussian path the optimal potential satisfies ∇Φ* = f x + ½ g² ∇log ρ̄ₜ. Two ways to use it:

- ``DirectPotential``: Φ is the network (the paper's and the released code's choice). The log-density is read back
  as log ρ̄ₜ = (2Φ − f‖x‖²)/g², which divides network error by g² → 0 as t → 1 (the conditioning trap).
- ``EnergyPotential`` (the default): the network N models the log-density itself,
  ψ(x, t) = −‖x‖²/(2v) + μ(t) N(x, t) with v = μ² + σ², and Φ = ½ f‖x‖² + ½ g² ψ, which simplifies to
  Φ = (v̇/4v)‖x‖² + σ(μ̇σ − σ̇μ) N(x, t): finite on all of [0, 1], exact (ψ = log N(0, I)) at t = 0, and equal to
  the optimum for standardised Gaussian data when N = 0. Reading ψ divides by nothing.

For images the energy parameterisation takes the autoencoder head in ψ's space (``DenoisingEnergy``):
ψ = −½‖x/√v − μW(x, t)‖² with a bounded image network W, so that ψ carries the 1/σ² scale of a log-density near the
data in its form (a scalar head must learn it), stays exactly log N(0, I) at t = 0 and confines for any weights.

A conditional network takes labels as a third argument, N(x, t, c); `with_labels` binds them so that losses and
samplers, which only know Φ(x, t), use it unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vpfb.paths import GaussianPath
from vpfb.potentials.base import potential_and_velocity
from vpfb.tensors import expand_like, flat_dot


def call_net(net: nn.Module, x: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
    """N(x, t) for an unconditional network, N(x, t, c) for a conditional one."""
    return net(x, t) if c is None else net(x, t, c)


class DirectPotential(nn.Module):
    """Φ(x, t) = N(x, t); log ρ̄ₜ(x) = (2Φ − f‖x‖²)/g² + C(t)."""

    def __init__(self, net: nn.Module, path: GaussianPath):
        super().__init__()
        self.net, self.path = net, path

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        return call_net(self.net, x, t, c)

    def value_and_velocity(self, x: Tensor, t: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor]:
        return potential_and_velocity(self.net, x, t, torch.is_grad_enabled(), rows)

    def log_density(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        return self.path.at(t).log_density_of(self(x, t, c), x)


class EnergyPotential(nn.Module):
    """Φ = (v̇/4v)‖x‖² + σ(μ̇σ − σ̇μ) N(x, t), whose log-density ψ = −‖x‖²/(2v) + μ N(x, t) is well conditioned."""

    def __init__(self, net: nn.Module, path: GaussianPath):
        super().__init__()
        self.net, self.path = net, path

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        s = self.path.at(t)
        return s.d_variance / (4 * s.variance) * flat_dot(x, x) + s.half_g2_mu * call_net(self.net, x, t, c)

    def value_and_velocity(self, x: Tensor, t: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor]:
        s = self.path.at(t)
        a, c = s.d_variance / (4 * s.variance), s.half_g2_mu  # Φ = a‖x‖² + cN
        n, grad_n = potential_and_velocity(self.net, x, t, torch.is_grad_enabled(), rows)
        e = lambda b: expand_like(b[:rows], grad_n)  # noqa: E731
        return a * flat_dot(x, x) + c * n, e(2 * a) * x[:rows] + e(c) * grad_n

    def log_density(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        s = self.path.at(t)
        return -flat_dot(x, x) / (2 * s.variance) + s.mu * call_net(self.net, x, t, c)


class DenoisingEnergy(nn.Module):
    """The scalar N(x, t[, c]) = ⟨x, W⟩/√v − ½μ‖W‖² with W = B·tanh(U(x, t[, c])/B), U an image network, so that
    EnergyPotential's ψ = −‖x‖²/(2v) + μN = −½‖ε̂‖², ε̂ = x/√v − μW: an autoencoder energy of the log-density.

    ε̂ plays the noise that a denoiser removes: near the data ψ ≈ −‖x − μx̄‖²/(2σ²) asks for ε̂ ≈ (x − μx̄)/σ
    (the denoiser-shaped energies of Salimans & Ho 2021 and Du et al. 2023, preconditioned so that W stays O(1)).
    With U = 0 (a zero-initialised output) ψ is the reference log N(0, vI); at t = 0 it is log N(0, I) exactly; and
    since |W| ≤ B in every pixel, ψ ≤ −½(‖x‖/√v − μB√d)² once ‖x‖ ≥ μB√(vd) (d pixels): exp ψ is integrable for
    every weight setting, so Langevin dynamics on ψ cannot run away.
    """

    def __init__(self, backbone: nn.Module, path: GaussianPath, bound: float = 10.0):
        super().__init__()
        self.backbone, self.path, self.bound = backbone, path, bound

    def bounded_output(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """W = B·tanh(U/B) ∈ (−B, B)."""
        return self.bound * torch.tanh(call_net(self.backbone, x, t, c) / self.bound)

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        w = self.bounded_output(x, t, c)
        s = self.path.at(t)
        return flat_dot(x, w) / s.variance.sqrt() - 0.5 * s.mu * flat_dot(w, w)


class LabelledPotential:
    """Φ(·, ·, c) with the labels c [N] bound: a potential of (x, t) for losses and samplers."""

    def __init__(self, potential: nn.Module, labels: Tensor):
        self.potential, self.labels = potential, labels

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.potential(x, t, self.labels)

    def log_density(self, x: Tensor, t: Tensor) -> Tensor:
        return self.potential.log_density(x, t, self.labels)


def with_labels(potential: nn.Module, labels: Tensor | None):
    """The potential itself when labels is None, else the potential with these labels bound."""
    return potential if labels is None else LabelledPotential(potential, labels)


PARAMETERISATIONS = {"direct": DirectPotential, "energy": EnergyPotential}


def parameterise(name: str, net: nn.Module, path: GaussianPath) -> nn.Module:
    """Wrap a network as a potential by name: "energy" (default) or "direct"."""
    if name not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation {name!r}; choose one of {sorted(PARAMETERISATIONS)}")
    return PARAMETERISATIONS[name](net, path)
