"""2-D toy data sets (FFJORD's scales) and the exact log-density of each, natural log in the data's own units.

Sets drawn as a curve c(θ) plus isotropic Gaussian noise of std s have p(x) = E_θ N(x; c(θ), s²I). For full circles
(circles, rings) this is the closed form (2πs²)⁻¹ exp(−(|x|² + r²)/2s²) I₀(r|x|/s²); for the other curves it is a
composite Gauss–Legendre rule over θ with QUADRATURE points per curve, on panels far shorter than s along the curve,
so the quadrature error is below 1e-6 nats.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

TOY_DATASETS = ("moons", "eightgaussians", "checkerboard", "circles", "rings", "pinwheel", "spirals", "swissroll")

MOONS_NOISE = 0.1
CIRCLES_FACTOR, CIRCLES_NOISE = 0.5, 0.08
RINGS_RADII, RINGS_NOISE = (0.75, 1.5, 2.25, 3.0), 0.08
EIGHT_RADIUS, EIGHT_STD = 2 * math.sqrt(2), 0.5 / math.sqrt(2)
CHECKER_LOW, CHECKER_CELL = -4.0, 2.0  # a 4 × 4 board on [-4, 4]²; black squares have an even column + row
SPIRAL_END, SPIRAL_SCALE, SPIRAL_NOISE = 3 * math.pi, 1 / 3, 0.1
SWISS_NOISE, SWISS_SCALE = 1.0, 0.2  # scikit-learn's roll with its noise, then shrunk: noise 0.2 in our units
PINWHEEL_ARMS, PINWHEEL_RADIAL, PINWHEEL_TANGENTIAL, PINWHEEL_RATE, PINWHEEL_SCALE = 5, 0.3, 0.1, 0.25, 2.0
QUADRATURE = 2000
PINWHEEL_GRID = 256
_CHUNK = 2**22  # entries of the largest [points, centres or angles] matrix held at once


def _check_name(name: str) -> None:
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_DATASETS)}")


# --- curves shared by the samplers and the densities -------------------------------------------------------------


def _moon_arcs(theta: np.ndarray) -> np.ndarray:
    """scikit-learn's two moons without noise: (cos θ, sin θ) and (1 − cos θ, 1/2 − sin θ), θ ∈ [0, π]."""
    outer = np.stack([np.cos(theta), np.sin(theta)], 1)
    return np.concatenate([outer, np.array([1.0, 0.5]) - outer])


def _spiral(theta: np.ndarray) -> np.ndarray:
    """FFJORD's first spiral arm SPIRAL_SCALE·θ(−cos θ, sin θ); the second arm is its negation."""
    return SPIRAL_SCALE * theta[:, None] * np.stack([-np.cos(theta), np.sin(theta)], 1)


def _swiss(t: np.ndarray) -> np.ndarray:
    """The (x, z) plane of scikit-learn's swiss roll, SWISS_SCALE·t(cos t, sin t), t ∈ [1.5π, 4.5π]."""
    return SWISS_SCALE * t[:, None] * np.stack([np.cos(t), np.sin(t)], 1)


def _eight_centres() -> np.ndarray:
    angles = np.arange(8) * np.pi / 4
    return EIGHT_RADIUS * np.stack([np.cos(angles), np.sin(angles)], 1)


def _gauss_legendre(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """QUADRATURE nodes and weights (summing to high − low): Gauss–Legendre of order 8 on equal panels."""
    nodes, weights = np.polynomial.legendre.leggauss(8)
    edges = np.linspace(low, high, QUADRATURE // 8 + 1)
    half = np.diff(edges)[:, None] / 2
    return (edges[:-1, None] + half * (nodes + 1)).ravel(), (half * weights).ravel()


# --- samplers ----------------------------------------------------------------------------------------------------


def _sample_moons(n: int, seed: int | None) -> np.ndarray:
    from sklearn.datasets import make_moons  # scikit-learn takes about a second to import: only when used

    return make_moons(n, noise=MOONS_NOISE, random_state=seed)[0]


def _sample_circles(n: int, seed: int | None) -> np.ndarray:
    from sklearn.datasets import make_circles

    return make_circles(n, factor=CIRCLES_FACTOR, noise=CIRCLES_NOISE, random_state=seed)[0]


def _sample_swissroll(n: int, seed: int | None) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    return SWISS_SCALE * make_swiss_roll(n, noise=SWISS_NOISE, random_state=seed)[0][:, [0, 2]]


def _sample_eightgaussians(n: int, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _eight_centres()[rng.integers(0, 8, n)] + EIGHT_STD * rng.standard_normal((n, 2))


def _sample_checkerboard(n: int, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    black = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    return CHECKER_LOW + CHECKER_CELL * (black[rng.integers(0, len(black), n)] + rng.random((n, 2)))


def _sample_rings(n: int, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    radius = np.array(RINGS_RADII)[rng.integers(0, len(RINGS_RADII), n)]
    angle = rng.uniform(0, 2 * np.pi, n)
    return radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1) + RINGS_NOISE * rng.standard_normal((n, 2))


def _sample_pinwheel(n: int, seed: int | None) -> np.ndarray:
    """FFJORD's pinwheel: features f ~ N((1, 0), diag(RADIAL², TANGENTIAL²)) turned clockwise by a_k + RATE·e^{f₀}."""
    rng = np.random.default_rng(seed)
    arm = rng.integers(0, PINWHEEL_ARMS, n)
    f = rng.standard_normal((n, 2)) * np.array([PINWHEEL_RADIAL, PINWHEEL_TANGENTIAL]) + np.array([1.0, 0.0])
    a = 2 * np.pi * arm / PINWHEEL_ARMS + PINWHEEL_RATE * np.exp(f[:, 0])
    cos, sin = np.cos(a), np.sin(a)
    return PINWHEEL_SCALE * np.stack([f[:, 0] * cos + f[:, 1] * sin, -f[:, 0] * sin + f[:, 1] * cos], 1)


def _sample_spirals(n: int, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = SPIRAL_END * np.sqrt(rng.random(n))  # θ has density 2θ/T²: even coverage along the arms
    sign = np.where(rng.integers(0, 2, n) == 0, 1.0, -1.0)[:, None]
    return sign * _spiral(theta) + SPIRAL_NOISE * rng.standard_normal((n, 2))


_SAMPLERS: dict[str, Callable[[int, int | None], np.ndarray]] = {
    "moons": _sample_moons,
    "eightgaussians": _sample_eightgaussians,
    "checkerboard": _sample_checkerboard,
    "circles": _sample_circles,
    "rings": _sample_rings,
    "pinwheel": _sample_pinwheel,
    "spirals": _sample_spirals,
    "swissroll": _sample_swissroll,
}


def sample_toy(name: str, n: int, seed: int | None = None) -> Tensor:
    """n points [n, 2] (float32) of the toy set `name`, the same for the same seed (None: fresh randomness)."""
    _check_name(name)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of points must be a positive integer, got {n!r}")
    return torch.as_tensor(_SAMPLERS[name](int(n), seed), dtype=torch.float32)


# --- densities ---------------------------------------------------------------------------------------------------


def _mixture_log_density(x: Tensor, centres: np.ndarray, std: float, weights: np.ndarray | None = None) -> Tensor:
    """log Σ_k w_k N(x; c_k, std² I) for centres c_k [K, 2] and weights summing to 1 (default 1/K), in row blocks."""
    c = torch.as_tensor(centres, dtype=torch.float64, device=x.device)
    log_w = (
        torch.full((len(c),), -math.log(len(c)), dtype=torch.float64, device=x.device)
        if weights is None
        else torch.as_tensor(np.log(weights), dtype=torch.float64, device=x.device)
    )
    bias = log_w - (c**2).sum(1) / (2 * std**2)
    out = []
    for block in x.split(max(1, _CHUNK // len(c))):
        # −|x − c|²/2s² + log w, expanded so that the [rows, K] work is one matrix product
        logits = (block @ c.T) / std**2 + bias - (block**2).sum(1, keepdim=True) / (2 * std**2)
        out.append(torch.logsumexp(logits, 1))
    return torch.cat(out) - math.log(2 * math.pi * std**2)


def _rings_log_density(x: Tensor, radii: tuple[float, ...], std: float) -> Tensor:
    """log (1/R) Σ_r (2πs²)⁻¹ exp(−(ρ − r)²/2s²) I₀e(rρ/s²), ρ = |x|, I₀e(z) = e^{−z}I₀(z): each circle with a
    uniform angle, exactly."""
    rho = x.norm(dim=1, keepdim=True)
    r = torch.tensor(radii, dtype=torch.float64, device=x.device)
    per_ring = -((rho - r) ** 2) / (2 * std**2) + torch.special.i0e(r * rho / std**2).log()
    return torch.logsumexp(per_ring, 1) - math.log(len(radii)) - math.log(2 * math.pi * std**2)


def _checkerboard_log_density(x: Tensor) -> Tensor:
    """−log 32 (uniform on 8 black squares of area 4) inside a black square, −inf elsewhere."""
    cell = torch.floor((x - CHECKER_LOW) / CHECKER_CELL)
    inside = ((cell >= 0) & (cell < 4)).all(1) & (cell.sum(1) % 2 == 0)
    return torch.full_like(x[:, 0], -math.log(8 * CHECKER_CELL**2)).masked_fill(~inside, -math.inf)


def _pinwheel_turn(beta: Tensor, rho: Tensor) -> tuple[Tensor, Tensor]:
    """E(β) = β − RATE e^{ρ cos β}, the angle the sampler gives the features ρ(cos β, sin β) before the arm's turn,
    and E'(β) = 1 + RATE ρ sin β e^{ρ cos β}."""
    bend = PINWHEEL_RATE * torch.exp(rho * torch.cos(beta))
    return beta - bend, 1 + bend * rho * torch.sin(beta)


def _pinwheel_brackets(rho: Tensor, angle: Tensor, grid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(point, step, c) for every grid step [β_j, β_j+1] in which E(β) − angle crosses 2πc/ARMS, c an integer."""
    level = torch.floor(PINWHEEL_ARMS * (_pinwheel_turn(grid, rho[:, None])[0] - angle[:, None]) / (2 * math.pi))
    point, step = torch.nonzero(level[:, 1:] != level[:, :-1], as_tuple=True)
    return point, step, torch.maximum(level[point, step], level[point, step + 1])


def _pinwheel_roots(lo: Tensor, hi: Tensor, rho: Tensor, target: Tensor) -> Tensor:
    """β in [lo, hi] with E(β) = target, by Newton steps kept inside the shrinking bracket (else bisection)."""
    lo_below = _pinwheel_turn(lo, rho)[0] < target
    beta = (lo + hi) / 2
    for _ in range(12):  # 3-5 steps reach rounding error away from the map's folds
        e, slope = _pinwheel_turn(beta, rho)
        moves_lo = (e < target) == lo_below
        lo, hi = torch.where(moves_lo, beta, lo), torch.where(moves_lo, hi, beta)
        newton = beta - (e - target) / slope
        beta, previous = torch.where((newton >= lo) & (newton <= hi), newton, (lo + hi) / 2), beta
        if bool(((beta - previous).abs() < 1e-12).all()):
            break
    return beta


def _pinwheel_log_density(x: Tensor) -> Tensor:
    """Change of variables from the features f = ρ(cos β, sin β) ~ N((1, 0), diag(RADIAL², TANGENTIAL²)), which the
    sampler keeps at length ρ and turns to the angle E(β) − a_k: p(x) = Σ_β N(f) / (ARMS · |E'(β)| · SCALE²) over
    every β ∈ [0, 2π) with E(β) = angle(x) + 2πc/ARMS for an integer c (the arm is c mod ARMS). Roots are bracketed
    on PINWHEEL_GRID angles, then polished; two roots in one step, or E moving more than 2π/ARMS in one step, need
    |RATE f₁e^{f₀}| ≳ 1, where N(f) is below about 3e-8 of its peak: roots can be missed only where p(x) is below
    about 1e-6 (the density peaks near 0.27).
    """
    z = x / PINWHEEL_SCALE
    rho, angle = z.norm(dim=1), torch.atan2(z[:, 1], z[:, 0])
    grid = 2 * math.pi * torch.arange(PINWHEEL_GRID + 1, dtype=torch.float64, device=x.device) / PINWHEEL_GRID
    size = max(1, _CHUNK // PINWHEEL_GRID)
    found = [_pinwheel_brackets(r, a, grid) for r, a in zip(rho.split(size), angle.split(size))]
    point = torch.cat([p + i * size for i, (p, _, _) in enumerate(found)])
    step, crossed = torch.cat([f[1] for f in found]), torch.cat([f[2] for f in found])
    rho = rho[point]
    beta = _pinwheel_roots(grid[step], grid[step + 1], rho, angle[point] + 2 * math.pi * crossed / PINWHEEL_ARMS)
    f0, f1 = rho * torch.cos(beta), rho * torch.sin(beta)
    log_f = (
        -(((f0 - 1) / PINWHEEL_RADIAL) ** 2) / 2
        - (f1 / PINWHEEL_TANGENTIAL) ** 2 / 2
        - math.log(2 * math.pi * PINWHEEL_RADIAL * PINWHEEL_TANGENTIAL)
    )
    terms = (log_f - _pinwheel_turn(beta, rho)[1].abs().log()).exp()
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device).index_add_(0, point, terms)
    return total.log() - math.log(PINWHEEL_ARMS * PINWHEEL_SCALE**2)


def _moons_log_density(x: Tensor) -> Tensor:
    theta, w = _gauss_legendre(0, np.pi)
    return _mixture_log_density(x, _moon_arcs(theta), MOONS_NOISE, np.concatenate([w, w]) / (2 * np.pi))


def _spirals_log_density(x: Tensor) -> Tensor:
    theta, w = _gauss_legendre(0, SPIRAL_END)
    w = w * theta / SPIRAL_END**2  # θ's density 2θ/T², halved for each of the two arms
    arm = _spiral(theta)
    return _mixture_log_density(x, np.concatenate([arm, -arm]), SPIRAL_NOISE, np.concatenate([w, w]))


def _swissroll_log_density(x: Tensor) -> Tensor:
    t, w = _gauss_legendre(1.5 * np.pi, 4.5 * np.pi)
    return _mixture_log_density(x, _swiss(t), SWISS_SCALE * SWISS_NOISE, w / (3 * np.pi))


_LOG_DENSITIES: dict[str, Callable[[Tensor], Tensor]] = {
    "moons": _moons_log_density,
    "eightgaussians": lambda x: _mixture_log_density(x, _eight_centres(), EIGHT_STD),
    "checkerboard": _checkerboard_log_density,
    "circles": lambda x: _rings_log_density(x, (1.0, CIRCLES_FACTOR), CIRCLES_NOISE),
    "rings": lambda x: _rings_log_density(x, RINGS_RADII, RINGS_NOISE),
    "pinwheel": _pinwheel_log_density,
    "spirals": _spirals_log_density,
    "swissroll": _swissroll_log_density,
}


def toy_log_density(name: str, x: Tensor) -> Tensor | None:
    """True log-density log p(x) [N] of the distribution `sample_toy(name, ·)` draws from, at points x [N, 2].

    Every set has one today, so None (no known density) never comes back; callers should still allow for it. moons
    and circles come from scikit-learn, which puts the angles on an even grid before adding noise and shuffling: the
    density is that of a uniform angle on the same interval, with the two curves weighted 1/2 each (the limit of
    many points). Computed in float64 and returned in x's floating dtype (float32 for other inputs).
    """
    _check_name(name)
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"toy densities take points of shape [N, 2], got {tuple(x.shape)}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return _LOG_DENSITIES[name](x.to(torch.float64)).to(dtype)
