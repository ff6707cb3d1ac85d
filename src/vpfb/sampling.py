"""Samplers that read only a potential (or any velocity field): the probability-flow ODE and Langevin dynamics."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from vpfb.ode import ODESolution, integrate
from vpfb.potentials.base import Potential, value_and_grad, velocity
from vpfb.tensors import draw_like


def sample_ode(potential: Potential, x0: Tensor, t0: float = 0.0, t1: float = 1.0, **kwargs) -> ODESolution:
    """Carry prior samples x0 along dx/dt = ∇ₓΦ(x, t) (kwargs as in `integrate`)."""
    return integrate(lambda x, t: velocity(potential, x, t), x0, t0, t1, **kwargs)


@dataclass
class LangevinResult:
    x: Tensor
    mean_grad_sq: Tensor  # [steps] E‖∇log p‖² along the chain (a long-run diagnostic)
    mean_log_p: Tensor  # [steps] E log p along the chain
    acceptance: float | None = None  # MALA only
    trajectory: Tensor | None = None  # [steps // save_every + 1, N, ...]
    log_p: Tensor | None = None  # [N] log p at the final states


def sample_langevin(
    log_p: Callable[[Tensor], Tensor],
    x0: Tensor,
    steps: int = 500,
    step_size: float = 1e-2,
    temperature: float = 1.0,
    metropolis: bool = False,
    save_every: int | None = None,
    generator: torch.Generator | None = None,
    start: tuple[Tensor, Tensor] | None = None,
) -> LangevinResult:
    """Langevin dynamics x ← x + h ∇log p(x)/T + √(2h) ξ, stationary law ∝ p^(1/T) (the same chain as
    x + h'∇log p + √(2h'T) ξ with h' = h/T: `step_size` is h, the step on log p/T).

    With metropolis=True each move is accepted or rejected (MALA), which removes the O(h) bias of the
    unadjusted chain; log_p must then be an exact (unnormalised) log-density. `start`: (log p, ∇log p) at x0 when the
    caller has them already.
    """
    if steps < 1 or step_size <= 0 or temperature <= 0:
        raise ValueError(f"need steps ≥ 1, step_size > 0 and temperature > 0; got {steps}, {step_size}, {temperature}")
    x = x0.detach()
    target = lambda y: log_p(y) / temperature  # noqa: E731  (p^(1/T))
    if start is None:
        value, grad = value_and_grad(target, x)
    else:
        value, grad = start[0].detach() / temperature, start[1].detach() / temperature
    scale = (2 * step_size) ** 0.5
    grads, values, accepted, saved = [], [], 0.0, [x]
    for k in range(steps):
        noise = draw_like(torch.randn, x, generator)
        proposal = x + step_size * grad + scale * noise
        new_value, new_grad = value_and_grad(target, proposal)
        if metropolis:
            forward = _log_q(proposal, x, grad, step_size)
            backward = _log_q(x, proposal, new_grad, step_size)
            log_ratio = new_value - value + backward - forward
            u = draw_like(torch.rand, log_ratio, generator)
            accept = u.log() < log_ratio
            accepted += accept.float().mean().item()
            keep = accept.reshape(-1, *([1] * (x.dim() - 1)))
            x = torch.where(keep, proposal, x)
            value, grad = torch.where(accept, new_value, value), torch.where(keep, new_grad, grad)
        else:
            x, value, grad = proposal, new_value, new_grad
        x, value, grad = x.detach(), value.detach(), grad.detach()
        grads.append((grad.flatten(1) ** 2).sum(1).mean() * temperature**2)
        values.append(value.mean() * temperature)
        if save_every and (k + 1) % save_every == 0:
            saved.append(x)
    return LangevinResult(
        x,
        torch.stack(grads),
        torch.stack(values),
        accepted / steps if metropolis else None,
        torch.stack(saved) if save_every else None,
        value * temperature,
    )


@dataclass
class AnnealedResult:
    x: Tensor
    acceptance: list[float]  # per level (MALA), or empty
    step_sizes: list[float]  # the step used at each level
    log_weights: Tensor | None = None  # [N] annealed importance weights (no transport), log Z_K/Z_0 = log mean exp


def log_mean_exp_and_ess(log_w: Tensor) -> tuple[float, float]:
    """Importance weights w [N] given as log w: log mean w (the estimate of a normaliser ratio) and Kish's effective
    sample size (Σw)²/Σw², between 1 and N."""
    total = torch.logsumexp(log_w, 0)
    return float(total - math.log(len(log_w))), float(torch.exp(2 * total - torch.logsumexp(2 * log_w, 0)))


def annealed_langevin(
    log_p: Callable[[Tensor, float], Tensor],
    x0: Tensor,
    times: list[float],
    base_steps: list[float],
    steps_per_level: int,
    temperature: float = 1.0,
    metropolis: bool = True,
    target_acceptance: float | None = 0.574,
    generator: torch.Generator | None = None,
    transport: Callable[[Tensor, float, float], Tensor] | None = None,
    start_time: float | None = None,
) -> AnnealedResult:
    """Chains carried through the targets log_p(·, t) for t in `times`, `steps_per_level` Langevin (MALA) steps at
    each, at step η·base_steps[k]. With MALA and a target acceptance a*, η ← η·exp(2(a − a*)) after each level whose
    acceptance was a (0.574: MALA's optimum for product targets, Roberts & Rosenthal 1998); the step changes only
    between levels, so each level's chain leaves its own target invariant. `transport(x, s, t)`, when given, moves
    the chains from one level's target towards the next before its steps (a predictor, as in Song et al. 2021's
    predictor–corrector samplers); the MCMC steps at each level are the corrector. Without transport, and with x0
    drawn exactly from exp log_p(·, t₀)/Z₀ for a time t₀ before times[0] (`start_time`), the result carries the
    annealed importance weights Σₖ [log_p(x, tₖ) − log_p(x, tₖ₋₁)] (Neal 2001): log Z(t_K)/Z(t₀) ≈ log mean exp."""
    if len(times) != len(base_steps) or not times or steps_per_level < 1:
        raise ValueError(
            f"need one base step per time and steps_per_level ≥ 1; got {len(times)} times, "
            f"{len(base_steps)} steps, steps_per_level={steps_per_level}"
        )
    x, eta, acceptance, used = x0, 1.0, [], []
    weighted = transport is None and start_time is not None
    log_w = torch.zeros(len(x0), dtype=torch.float64, device=x0.device) if weighted else None
    for k, (t, base) in enumerate(zip(times, base_steps)):
        if transport is not None and k > 0:
            x = transport(x, times[k - 1], t).detach()
        start = None
        if weighted:  # log_p(x, previous t) is the last level's final value, log_p(x, t) the new level's start
            if k == 0:
                with torch.no_grad():
                    log_p_x = log_p(x, start_time)
            start = value_and_grad(lambda y, t=t: log_p(y, t), x)
            log_w += (start[0].detach() - log_p_x).double() / temperature
        used.append(eta * base)
        res = sample_langevin(
            lambda y, t=t: log_p(y, t),
            x,
            steps_per_level,
            eta * base,
            temperature,
            metropolis,
            generator=generator,
            start=start,
        )
        x, log_p_x = res.x, res.log_p
        if metropolis:
            acceptance.append(res.acceptance)
            if target_acceptance is not None:
                eta *= math.exp(2 * (res.acceptance - target_acceptance))
    return AnnealedResult(x, acceptance, used, log_w)


def langevin_on_energy(
    potential,
    path,
    x: Tensor,
    t: float,
    steps: int = 500,
    step_size: float | None = None,
    metropolis: bool = True,
    anneal: bool = True,
    predictor: bool = True,
    denoise: bool = True,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> AnnealedResult:
    """MALA (or unadjusted Langevin) on an energy ψ(x, t) = potential.log_density(x, t) ∝ log ρ̄ₜ in the path's
    coordinates, from x [N, ...]: prior draws N(0, σ(0)²I) when annealing, states at t otherwise (the recipe is
    EnergyModel.langevin's). Returns the chains' end in data units: Tweedie's E[x̄ | x] = (x + σ²∇ψ)/μ at t with
    denoise, else x/μ."""
    s = path.at(torch.tensor([float(t)], device=x.device))
    mu, sigma = float(s.mu), float(s.sigma)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if mu <= 0 or sigma <= 0:
        raise ValueError(
            f"Langevin on ψ(·, t) needs μ(t) > 0 and σ(t) > 0; at t = {t:g} μ = {mu:g}, "
            f"σ = {sigma:g}: read the energy at a t inside (0, 1) or train with path.sigma_min > 0"
        )
    block = min(5, steps)
    levels = steps // block
    times = [t * (k + 1) / levels for k in range(levels)] if anneal else [t] * levels
    at = path.at(torch.tensor(times, device=x.device))
    if step_size is None:  # σ(tₖ)²/D^(1/3), adapted towards MALA's optimal acceptance
        base = (at.sigma**2 / x[0].numel() ** (1 / 3)).tolist()
    else:  # a fixed step in standardised data units
        base = (at.mu**2 * step_size).tolist()
    full = lambda y, s: torch.full((len(y),), s, device=y.device)  # noqa: E731
    log_p = lambda y, s: potential.log_density(y, full(y, s))  # noqa: E731
    transport = None
    if anneal and predictor:
        transport = lambda y, s0, s1: y + (s1 - s0) * velocity(potential, y, full(y, s0))  # noqa: E731
        x = transport(x, 0.0, times[0]).detach()
    res = annealed_langevin(
        log_p,
        x,
        times,
        base,
        block,
        temperature,
        metropolis,
        0.574 if step_size is None else None,
        generator,
        transport,
        start_time=0.0 if anneal else None,
    )
    x = res.x
    if denoise:
        x = x + sigma**2 * value_and_grad(lambda y: log_p(y, t), x)[1]
    return dataclasses.replace(res, x=x.detach() / mu)


def _log_q(to: Tensor, frm: Tensor, grad_frm: Tensor, h: float) -> Tensor:
    """log density (up to a constant) of the Langevin proposal N(to; frm + h∇, 2h I)."""
    diff = to - frm - h * grad_frm
    return -(diff.flatten(1) ** 2).sum(1) / (4 * h)
