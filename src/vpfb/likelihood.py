"""Likelihoods: the continuous-normalising-flow log-likelihood and a 2-D grid normaliser for any log-density."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from vpfb.ode import MAX_NFE, Field, solve
from vpfb.tensors import draw_like


def divergence(v: Tensor, x: Tensor, probes: Tensor | None = None) -> Tensor:
    """∇·v at x [N, ...] for v computed from x with a graph: exact (D backward passes) when probes is None, else
    Hutchinson's unbiased estimate (1/K) Σₖ zₖᵀ(∂v/∂x)zₖ with the K probes [K, N, ...] given (K backward passes;
    one probe may be given as [N, ...]). For v = ∇Φ this is the Laplacian ΔΦ."""
    if probes is not None:
        probes = probes if probes.dim() > x.dim() else probes.unsqueeze(0)
        total = 0
        for z in probes:
            (jz,) = torch.autograd.grad((v * z).sum(), x, create_graph=True)
            total = total + (jz * z).flatten(1).sum(1)
        return total / len(probes)
    v_flat = v.flatten(1)
    div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(v_flat.shape[1]):
        (row,) = torch.autograd.grad(v_flat[:, i].sum(), x, create_graph=True)
        div = div + row.flatten(1)[:, i]
    return div


def log_likelihood(
    field: Field,
    x1: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    prior_std: float = 1.0,
    hutchinson: int = 0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "dopri5",
    steps: int = 100,
    generator: torch.Generator | None = None,
    max_nfe: int = MAX_NFE,
) -> Tensor:
    """log p_{t1}(x₁) = log N(x₀; 0, prior_std² I) − ∫ ∇·v(x_t, t) dt for x₁ [N, ...] → [N], integrating the flow
    back from t1 to t0 (solvers as in `vpfb.ode.solve`).

    `field(x, t)` must be differentiable in x (for a potential: v = ∇Φ with create_graph=True). `hutchinson` = K > 0
    (True: 1) estimates ∇·v with K Rademacher probes per sample held fixed along the path (FFJORD), drawn from
    `generator`: unbiased, with variance 2Σ_{i≠j}J_ij²/K for a constant symmetric Jacobian J, at K backward passes
    per evaluation instead of D. The solve stops with a SolverError after `max_nfe` evaluations.
    """
    if isinstance(hutchinson, float) or hutchinson < 0:
        raise ValueError(f"hutchinson is a number of probes (0: the exact divergence), got {hutchinson!r}")
    probes = None
    if hutchinson:
        probes = (draw_like(torch.rand, x1.expand(int(hutchinson), *x1.shape), generator) < 0.5).to(x1.dtype) * 2 - 1

    def dynamics(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = field(x, t.expand(x.shape[0]))
            div = divergence(v, x, probes)
        return v.detach(), div.detach()

    times = torch.tensor([t1, t0], dtype=x1.dtype, device=x1.device)
    zero = torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device)
    (xs, integral), _ = solve(dynamics, (x1.detach(), zero), times, solver, steps, rtol, atol, max_nfe)
    x0, delta = xs[-1], integral[-1]  # delta = ∫_{t1}^{t0} ∇·v dt = −∫_{t0}^{t1} ∇·v dt
    dim = x0[0].numel()
    log_prior = -0.5 * (x0.flatten(1) ** 2).sum(1) / prior_std**2 - dim * math.log(prior_std * math.sqrt(2 * math.pi))
    return log_prior + delta


def grid_cells(low: Tensor, high: Tensor, points: int = 400) -> tuple[Tensor, float]:
    """The midpoints [points², 2] of a points × points grid of cells over the 2-D box [low, high], and log of a
    cell's area: ∫ exp ℓ ≈ logsumexp(ℓ(midpoints)) + log area (the midpoint rule)."""
    low, high = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64)
    if low.shape != (2,) or high.shape != (2,) or not bool((high > low).all()):
        raise ValueError(f"grid normalisation needs a 2-D box with low < high, got {low} and {high}")
    cell = (high - low) / points
    axes = [low[i] + cell[i] * (torch.arange(points, dtype=torch.float64) + 0.5) for i in range(2)]
    return torch.cartesian_prod(*axes).float(), float(cell.log().sum())


def grid_log_normaliser(
    log_density: Callable[[Tensor], Tensor], low: Tensor, high: Tensor, points: int = 400, batch: int = 20000
) -> Tensor:
    """log ∫ exp(log_density) over the 2-D box [low, high] by the midpoint rule on points × points cells."""
    grid, log_cell = grid_cells(low, high, points)
    values = torch.cat([log_density(chunk).detach().double().cpu() for chunk in grid.split(batch)])
    return torch.logsumexp(values, 0) + log_cell


def grid_box(x: Tensor, pad: float = 0.25) -> tuple[Tensor, Tensor]:
    """A box around 2-D points, enlarged by `pad` times its size on each side (a side of size 0, a constant column,
    counts as size 1)."""
    low, high = x.min(0).values, x.max(0).values
    span = high - low
    margin = pad * torch.where(span > 0, span, torch.ones_like(span))
    return low - margin, high + margin


def bits_per_dim(log_p: Tensor, dim: int, scale: float = 127.5) -> tuple[float, float]:
    """Mean bits per dimension of dequantised 8-bit images x̃ = x + u (u ~ U[0, 1)) from the log-density log p(y)
    of y = x̃/scale − 1 ∈ [-1, 1], one value per image: bpd = (−log p(y) + D log scale)/(D ln 2), and its standard
    error over the images (which includes Hutchinson's noise when log p is estimated with it)."""
    if log_p.dim() != 1 or len(log_p) < 2:
        raise ValueError(f"need one log-density per image for at least 2 images, got shape {tuple(log_p.shape)}")
    bpd = (-log_p.double() + dim * math.log(scale)) / (dim * math.log(2))
    return bpd.mean().item(), (bpd.std() / math.sqrt(len(bpd))).item()
