"""Closed forms for Gaussian data x̄ ~ N(m, diag s²) on any Gaussian path (docs/method.md §8)."""

from __future__ import annotations

import math
import os
import queue
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

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
        s = self.path.at(t)
        mu, sig, dmu, dsig = (a.reshape(-1, 1) for a in (s.mu, s.sigma, s.d_mu, s.d_sigma))
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
        return (-(self._rotated(x, mu) ** 2) / (2 * v) - 0.5 * torch.log(2 * math.pi * v)).sum(1)

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
        monkeypatch.setattr(
            f"torchvision.datasets.{module}.check_integrity", lambda path, md5=None: os.path.isfile(path)
        )
    return torchvision


def _rank_main(job, rank: int, size: int, port: int, args: tuple, results) -> None:
    """One spawned process: joins the group as torchrun would start it, runs job(world, *args), reports."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        from vpfb import distributed

        world = distributed.init("cpu")
        report = job(world, *args)
        distributed.cleanup()
        results.put((rank, report))
    except BaseException:
        results.put((rank, traceback.format_exc()))


def run_as_ranks(job, size: int, *args) -> dict[int, dict]:
    """Every rank's report of job(world, *args), run in `size` spawned gloo processes on the CPU with torchrun's
    environment variables. Reports hold plain numbers: shared tensors die with their process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_rank_main, args=(job, rank, size, port, args, results), daemon=True)
        for rank in range(size)
    ]
    for p in processes:
        p.start()
    reports = {}
    try:
        for _ in processes:
            rank, report = results.get(timeout=240)
            assert isinstance(report, dict), f"rank {rank} failed:\n{report}"
            reports[rank] = report
    except queue.Empty:
        pytest.fail("the distributed processes hung")
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return reports
