"""Closed forms for Gaussian data x̄ ~ N(m, diag s²) on any Gaussian path (METHOD.md §8)."""
from __future__ import annotations

import math
import os

import pytest
import torch

from vpfb.paths import GaussianPath


class GaussianTruth:
    """x̄ ~ N(m, Σ) (Σ = diag s² or a full cov): ρ̄ₜ = N(μm, V), V = μ²Σ + σ²I, ∇Φ* = μ̇m + ½V̇V⁻¹(x − μm),
    Φ* = μ̇m·x + ¼(x − μm)ᵀV̇V⁻¹(x − μm). Σ and I commute, so in Σ's eigenbasis everything is per-coordinate."""

    def __init__(self, path: GaussianPath, m, s=None, cov=None):
        self.path = path
        self.m = torch.as_tensor(m, dtype=torch.float32)
        cov = torch.diag(torch.as_tensor(s, dtype=torch.float32) ** 2) if cov is None else torch.as_tensor(cov)
        lam, self.q = torch.linalg.eigh(cov.double())
        self.lam, self.q = lam.float(), self.q.float()

    def double(self):
        self.m, self.lam, self.q = self.m.double(), self.lam.double(), self.q.double()
        return self

    def _coeffs(self, t):
        p = self.path
        mu, sig, dmu, dsig = (f(t).reshape(-1, 1) for f in (p.mu, p.sigma, p.d_mu, p.d_sigma))
        v = mu**2 * self.lam + sig**2
        dv = 2 * mu * dmu * self.lam + 2 * sig * dsig
        return mu, dmu, v, dv

    def _rotated(self, x, mu):
        return (x - mu * self.m) @ self.q  # coordinates of x − μm in Σ's eigenbasis

    def potential(self, x, t):
        mu, dmu, v, dv = self._coeffs(t)
        return (dmu * self.m * x).sum(1) + (dv / (4 * v) * self._rotated(x, mu) ** 2).sum(1)

    def velocity(self, x, t):
        mu, dmu, v, dv = self._coeffs(t)
        return dmu * self.m + (dv / (2 * v) * self._rotated(x, mu)) @ self.q.T

    def log_density(self, x, t):
        mu, _, v, _ = self._coeffs(t)
        return (-self._rotated(x, mu) ** 2 / (2 * v) - 0.5 * torch.log(2 * math.pi * v)).sum(1)

    def sample_data(self, n, generator=None):
        eps = torch.randn(n, self.m.numel(), generator=generator, dtype=self.m.dtype)
        return self.m + (self.lam.sqrt() * eps) @ self.q.T

    def sample_marginal(self, n, t: float, generator=None):
        mu, _, v, _ = self._coeffs(torch.full((n,), t, dtype=self.m.dtype))
        eps = torch.randn(n, self.m.numel(), generator=generator, dtype=self.m.dtype)
        return mu * self.m + (v.sqrt() * eps) @ self.q.T


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class RowSource:
    """A batch source over a tensor's rows that flips the sign of random rows with the trainer's generator."""

    def __init__(self, data):
        self.data, self.generators = data, set()

    def __len__(self):
        return len(self.data)

    def batch(self, index, generator):
        self.generators.add(id(generator))
        flip = torch.rand(len(index), 1, generator=generator) < 0.5
        return torch.where(flip, -self.data[index], self.data[index])


def interrupt_at(stop):
    def callback(step, ema):
        if step == stop:
            raise KeyboardInterrupt
    return callback


@pytest.fixture
def torchvision_without_md5(monkeypatch):
    """torchvision's datasets with the md5 comparison of CIFAR, SVHN and CelebA reduced to a file-exists check."""
    torchvision = pytest.importorskip("torchvision")
    for module in ("cifar", "svhn", "celeba"):
        monkeypatch.setattr(f"torchvision.datasets.{module}.check_integrity",
                            lambda path, md5=None: os.path.isfile(path))
    return torchvision
