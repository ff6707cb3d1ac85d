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
from vpfb.ode import integrate
from vpfb.potentials import value_and_grad
from vpfb.sampling import sample_langevin
from vpfb.tensors import draw_like, expand_like

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
    """Run `method` from x0 [N, ...] for t_end / step_size steps, recording the diagnostics at `records` equally
    spaced times (both ends included; records − 1 must divide the steps). The ODE is `vpfb.ode`'s Euler solver, the
    principled chain `vpfb.sampling.sample_langevin` (unadjusted).

    Args:
        potential: Φ(x, t), x [N, ...] and t [N] -> [N] (e.g. EnergyModel.phi, in standardised units).
        x0: [N, ...] starting states.
        method: one of METHODS, "ode", "sgld" or "released".
        t_end: the time run to; step_size: h, so round(t_end / h) steps.
        temperature: T of the target exp(Φ_B/T) ("sgld"; "released" normalises its drift, so T leaves it unchanged).
        noise_scale: s of "released".
        records: K, the number of recorded times, at least 2.
        generator: the chains' noise (unused by "ode").
    Returns:
        LongRun: times [K], mean_grad_sq [K] E‖∇ₓΦ(x, 1)‖², mean_phi [K] EΦ(x, 1), snapshots [K, N, ...].
    """
    if method not in METHODS:
        raise ValueError(f"unknown long-run method {method!r}; choose one of {METHODS}")
    steps = round(t_end / step_size)
    if steps < 1 or records < 2 or steps % (records - 1):
        raise ValueError(
            f"need t_end ≥ step_size and records ≥ 2 with records − 1 dividing the {steps} steps, "
            f"got t_end={t_end}, step_size={step_size}, records={records}"
        )
    every = steps // (records - 1)
    log_p_b = lambda y: boltzmann(potential, y) / temperature  # noqa: E731
    if method == "ode":
        field = lambda y, t: value_and_grad(lambda z: potential(z, t.clamp(max=1.0)), y)[1]  # noqa: E731
        states = integrate(field, x0.detach(), 0.0, steps * step_size, "euler", steps, save=records).trajectory
    elif method == "sgld":
        states = sample_langevin(log_p_b, x0, steps, step_size, save_every=every, generator=generator).trajectory
    else:
        states = _released(log_p_b, x0.detach(), steps, step_size, noise_scale, every, generator)
    at_one = lambda y: potential(y, torch.ones(len(y), dtype=y.dtype, device=y.device))  # noqa: E731
    phis, grads = zip(*(value_and_grad(at_one, x) for x in states))
    return LongRun(
        torch.arange(records) * (every * step_size),
        torch.stack([(g.flatten(1) ** 2).sum(1).mean().detach() for g in grads]),
        torch.stack([phi.mean().detach() for phi in phis]),
        states,
    )


def _released(log_p_b, x: Tensor, steps: int, h: float, noise_scale: float, every: int, generator) -> Tensor:
    """The authors' heuristic chain: x ← x + h·½√D·d/‖d‖ + s√(2h)ξ with d = ∇Φ_B; the states every `every` steps."""
    dim, saved = x[0].numel(), [x]
    for k in range(1, steps + 1):
        drift = value_and_grad(log_p_b, x)[1]
        noise = draw_like(torch.randn, x, generator)
        norm = expand_like(drift.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        x = (x + h * 0.5 * math.sqrt(dim) * drift / norm + noise_scale * math.sqrt(2 * h) * noise).detach()
        if k % every == 0:
            saved.append(x)
    return torch.stack(saved)
