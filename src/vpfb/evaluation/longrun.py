"""Long runs (docs/method.md §5): the ODE dx/dt = ∇Φ over t ∈ [0, t_end] against Langevin dynamics on the paper's
Boltzmann energy Φ_B, with the diagnostics the paper plots, E‖∇Φ‖² and EΦ (at t = 1), along the way.

Times beyond 1 evaluate the potential at t = 1 (an autonomous Φ(x) ignores t anyway). Methods:
- "ode": Euler steps of dx/dt = ∇Φ(x, min(t, 1));
- "sgld": the principled chain x ← x + h∇Φ_B + √(2hT)ξ, stationary law ∝ exp(Φ_B/T);
- "released": the authors' heuristic, as we read it: d = ∇Φ_B = 4∇Φ − 2x rescaled to norm √D,
  x ← x + h·w·d̂ + s·√(2h)ξ with w = 0.5 and s = noise_scale (0.3 CIFAR-10, 0.35 CelebA); it has no clean
  stationary law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from vpfb.energy import boltzmann
from vpfb.potentials import value_and_grad
from vpfb.sampling import draw_like

METHODS = ("ode", "sgld", "released")


@dataclass
class LongRun:
    times: Tensor  # [K] times at which the diagnostics were taken
    mean_grad_sq: Tensor  # [K] E‖∇ₓΦ(x, 1)‖²
    mean_phi: Tensor  # [K] E Φ(x, 1)
    snapshots: Tensor  # [K, N, ...] the states at those times


def long_run(
    potential: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    method: str = "sgld",
    t_end: float = 20.0,
    step_size: float = 0.02,
    temperature: float = 1.0,
    noise_scale: float = 0.3,
    records: int = 11,
    generator: torch.Generator | None = None,
) -> LongRun:
    """Run `method` from x0 for t_end / step_size steps, recording the diagnostics at `records` equally spaced
    times (both ends included)."""
    if method not in METHODS:
        raise ValueError(f"unknown long-run method {method!r}; choose one of {METHODS}")
    steps = round(t_end / step_size)
    if steps < 1 or records < 2:
        raise ValueError(f"need t_end ≥ step_size and records ≥ 2, got {t_end}, {step_size}, {records}")
    at_one = lambda y: potential(y, torch.ones(len(y), dtype=y.dtype, device=y.device))  # noqa: E731
    log_p_b = lambda y: boltzmann(potential, y) / temperature  # noqa: E731
    record_at = {round(k * steps / (records - 1)) for k in range(records)}
    x, rows = x0.detach(), []
    dim = x0[0].numel()
    for k in range(steps + 1):
        if k in record_at:
            phi, grad = value_and_grad(at_one, x)
            rows.append((k * step_size, (grad.flatten(1) ** 2).sum(1).mean().detach(), phi.mean().detach(), x))
        if k == steps:
            break
        t = torch.full((len(x),), min(k * step_size, 1.0), dtype=x.dtype, device=x.device)
        if method == "ode":
            x = x + step_size * value_and_grad(lambda y: potential(y, t), x)[1]
        else:
            drift = value_and_grad(log_p_b, x)[1]
            noise = draw_like(torch.randn, x, generator)
            if method == "sgld":
                x = x + step_size * drift + math.sqrt(2 * step_size) * noise
            else:
                norm = drift.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *[1] * (x.dim() - 1))
                x = x + step_size * 0.5 * math.sqrt(dim) * drift / norm + noise_scale * math.sqrt(2 * step_size) * noise
        x = x.detach()
    times, grads, phis, states = zip(*rows)
    return LongRun(torch.tensor(times), torch.stack(grads), torch.stack(phis), torch.stack(states))
