"""2-D toy data sets and, where it can be computed, their exact density (natural log, the data's own units).

Sets drawn as "a curve plus isotropic Gaussian noise" have p(x) = E_θ N(x; c(θ), s²I), computed by midpoint
quadrature over the curve parameter θ (error far below 1e-3 nats at the resolutions used).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

TOY_DATASETS = ("moons", "eightgaussians", "checkerboard", "circles", "rings", "spirals", "swissroll", "pinwheel")
MOONS_NOISE, CIRCLES_NOISE, CIRCLES_FACTOR = 0.1, 0.08, 0.5
RINGS_RADII, RINGS_NOISE = (1.0, 2.0, 3.0, 4.0), 0.1
EIGHT_RADIUS, EIGHT_STD = 4 / math.sqrt(2), 0.5 / math.sqrt(2)
SPIRAL_TURN, SPIRAL_SCALE, SPIRAL_NOISE = 3 * math.pi, 1 / 3, 0.1
SWISS_SCALE, SWISS_NOISE = 1 / 7.5, 0.5
QUADRATURE = 1000  # spacing ≤ noise/10 on every curve: the midpoint error is then negligible


def _check(name: str, n: int) -> None:
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_DATASETS)}")
    if n < 1:
        raise ValueError(f"number of points must be positive, got {n}")


def _eight_centres() -> np.ndarray:
    angles = np.arange(8) * np.pi / 4
    return EIGHT_RADIUS * np.stack([np.cos(angles), np.sin(angles)], 1)


def _spiral(theta: np.ndarray, arm: np.ndarray) -> np.ndarray:
    """Two arms r = θ, the second rotated by π, scaled by SPIRAL_SCALE."""
    sign = np.where(arm == 0, 1.0, -1.0)[:, None]
    return sign * SPIRAL_SCALE * np.stack([theta * np.cos(theta), theta * np.sin(theta)], 1)


def _swiss(t: np.ndarray) -> np.ndarray:
    return SWISS_SCALE * np.stack([t * np.cos(t), t * np.sin(t)], 1)


def sample_toy(name: str, n: int, seed: int | None = None) -> Tensor:
    """n points [n, 2] (float32) of a toy set, deterministic given the seed."""
    _check(name, n)
    from sklearn import datasets  # scikit-learn only when toy data is asked for

    rng = np.random.default_rng(seed)
    state = None if seed is None else int(seed)
    if name == "moons":
        x = datasets.make_moons(n, noise=MOONS_NOISE, random_state=state)[0]
    elif name == "circles":
        x = datasets.make_circles(n, factor=CIRCLES_FACTOR, noise=CIRCLES_NOISE, random_state=state)[0]
    elif name == "swissroll":
        x3 = datasets.make_swiss_roll(n, noise=SWISS_NOISE, random_state=state)[0]
        x = SWISS_SCALE * x3[:, [0, 2]]
    elif name == "eightgaussians":
        x = _eight_centres()[rng.integers(0, 8, n)] + EIGHT_STD * rng.standard_normal((n, 2))
    elif name == "checkerboard":
        square = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])[rng.integers(0, 8, n)]
        x = -4 + 2 * (square + rng.random((n, 2)))
    elif name == "rings":
        radius = np.array(RINGS_RADII)[rng.integers(0, len(RINGS_RADII), n)]
        angle = rng.uniform(0, 2 * np.pi, n)
        x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1) + RINGS_NOISE * rng.standard_normal((n, 2))
    elif name == "spirals":
        theta = SPIRAL_TURN * np.sqrt(rng.random(n))  # uniform density over the area the arms sweep
        x = _spiral(theta, rng.integers(0, 2, n)) + SPIRAL_NOISE * rng.standard_normal((n, 2))
    else:  # pinwheel: five radial arms bent by an angle growing with the radius
        arm = rng.integers(0, 5, n)
        feats = rng.standard_normal((n, 2)) * np.array([0.3, 0.05]) + np.array([1.0, 0.0])
        angle = arm * 2 * np.pi / 5 + 0.25 * np.exp(feats[:, 0])
        rot = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], 1).reshape(-1, 2, 2)
        x = 2 * np.einsum("ni,nji->nj", feats, rot)
    return torch.as_tensor(x, dtype=torch.float32)


def _curve_mixture(x: Tensor, points: np.ndarray, log_weights: np.ndarray, noise: float) -> Tensor:
    """log Σ_k w_k N(x; c_k, noise² I) for curve points c_k [K, 2] with log-weights summing to 0, in chunks."""
    c = torch.as_tensor(points, dtype=torch.float64)
    lw = torch.as_tensor(log_weights, dtype=torch.float64)
    out = []
    for chunk in x.double().split(2048):
        sq = torch.cdist(chunk, c) ** 2
        out.append(torch.logsumexp(lw - sq / (2 * noise**2), 1) - math.log(2 * math.pi * noise**2))
    return torch.cat(out).to(x.dtype)


def _uniform_grid(low: float, high: float, k: int = QUADRATURE) -> np.ndarray:
    return low + (high - low) * (np.arange(k) + 0.5) / k


def toy_log_density(name: str, x: Tensor) -> Tensor | None:
    """Exact log-density [N] of the distribution `sample_toy(name, ·)` draws from, or None where unknown
    (pinwheel). For moons and circles scikit-learn spaces θ evenly; the density is that of θ uniform."""
    _check(name, 1)
    x = torch.as_tensor(x)
    if name == "eightgaussians":
        return _curve_mixture(x, _eight_centres(), np.full(8, -math.log(8)), EIGHT_STD)
    if name == "checkerboard":
        cell = torch.floor((x + 4) / 2)
        inside = ((x > -4) & (x < 4)).all(1) & ((cell.sum(1) % 2) == 0)
        return torch.where(inside, torch.full_like(x[:, 0], -math.log(32.0)), torch.full_like(x[:, 0], -math.inf))
    if name == "moons":
        th = _uniform_grid(0, np.pi)
        outer = np.stack([np.cos(th), np.sin(th)], 1)
        inner = np.stack([1 - np.cos(th), 1 - np.sin(th) - 0.5], 1)
        return _curve_mixture(x, np.concatenate([outer, inner]), np.full(2 * len(th), -math.log(2 * len(th))),
                              MOONS_NOISE)
    if name == "circles":
        th = _uniform_grid(0, 2 * np.pi)
        ring = np.stack([np.cos(th), np.sin(th)], 1)
        return _curve_mixture(x, np.concatenate([ring, CIRCLES_FACTOR * ring]),
                              np.full(2 * len(th), -math.log(2 * len(th))), CIRCLES_NOISE)
    if name == "rings":
        th = _uniform_grid(0, 2 * np.pi)
        ring = np.stack([np.cos(th), np.sin(th)], 1)
        pts = np.concatenate([r * ring for r in RINGS_RADII])
        return _curve_mixture(x, pts, np.full(len(pts), -math.log(len(pts))), RINGS_NOISE)
    if name == "spirals":
        th = _uniform_grid(0, SPIRAL_TURN, 2 * QUADRATURE)
        w = np.log(2 * th / SPIRAL_TURN**2 * (SPIRAL_TURN / len(th)) / 2)  # p(θ) dθ, halved per arm
        pts = np.concatenate([_spiral(th, np.zeros(len(th))), _spiral(th, np.ones(len(th)))])
        return _curve_mixture(x, pts, np.concatenate([w, w]), SPIRAL_NOISE)
    if name == "swissroll":
        t = _uniform_grid(1.5 * np.pi, 4.5 * np.pi, 2 * QUADRATURE)
        return _curve_mixture(x, _swiss(t), np.full(len(t), -math.log(len(t))), SWISS_SCALE * SWISS_NOISE)
    return None
