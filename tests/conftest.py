"""Closed forms for Gaussian data x̄ ~ N(m, diag s²) on any Gaussian path (METHOD.md §8)."""
from __future__ import annotations

import math

import pytest
import torch

from vpfb.paths import GaussianPath


class GaussianTruth:
    """ρ̄ₜ = N(μm, diag v), v = μ²s² + σ²; ∇Φ* = μ̇m + (v̇/2v)(x − μm); Φ* = Σ μ̇mx + (v̇/4v)(x − μm)²."""

    def __init__(self, path: GaussianPath, m, s):
        self.path = path
        self.m = torch.as_tensor(m, dtype=torch.float32)
        self.s = torch.as_tensor(s, dtype=torch.float32)

    def _coeffs(self, t):
        p = self.path
        mu, sig, dmu, dsig = (f(t).reshape(-1, 1) for f in (p.mu, p.sigma, p.d_mu, p.d_sigma))
        v = mu**2 * self.s**2 + sig**2
        dv = 2 * mu * dmu * self.s**2 + 2 * sig * dsig
        return mu, dmu, v, dv

    def potential(self, x, t):
        mu, dmu, v, dv = self._coeffs(t)
        return (dmu * self.m * x + dv / (4 * v) * (x - mu * self.m) ** 2).sum(1)

    def velocity(self, x, t):
        mu, dmu, v, dv = self._coeffs(t)
        return dmu * self.m + dv / (2 * v) * (x - mu * self.m)

    def log_density(self, x, t):
        mu, _, v, _ = self._coeffs(t)
        return (-(x - mu * self.m) ** 2 / (2 * v) - 0.5 * torch.log(2 * math.pi * v)).sum(1)

    def sample_data(self, n, generator=None):
        return self.m + self.s * torch.randn(n, self.m.numel(), generator=generator)

    def sample_marginal(self, n, t: float, generator=None):
        tt = torch.full((n,), t)
        mu, _, v, _ = self._coeffs(tt)
        return mu * self.m + v.sqrt() * torch.randn(n, self.m.numel(), generator=generator)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
