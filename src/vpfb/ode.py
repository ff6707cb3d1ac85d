"""The one ODE engine (torchdiffeq) behind sampling, likelihoods and long runs: solver names, step control and a
limit on evaluations, so that a stiff or diverged field stops with a clear error instead of shrinking its step
without end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torchdiffeq import odeint

Field = Callable[[Tensor, Tensor], Tensor]  # (x [N, ...], t [N]) -> dx/dt
FIXED_STEP = {"euler": "euler", "heun": "heun2", "rk4": "rk4"}
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
MAX_NFE = 10_000  # evaluations after which a solve is stopped as stuck


class SolverError(RuntimeError):
    """An ODE solve that cannot finish: more evaluations than allowed, or a velocity that is not finite."""


@dataclass
class ODESolution:
    x: Tensor  # state at t1
    nfe: int  # velocity evaluations
    times: Tensor | None = None  # [T] when a trajectory was asked for
    trajectory: Tensor | None = None  # [T, N, ...]


class Evaluations:
    """Counts a solver's evaluations of the velocity and stops the solve with a SolverError past `limit` of them or
    at a non-finite velocity."""

    def __init__(self, solver: str, limit: int):
        if limit < 1:
            raise ValueError(f"max_nfe must be at least 1, got {limit}")
        self.solver, self.limit, self.count = solver, limit, 0

    def check(self, t: Tensor, v: Tensor) -> None:
        self.count += 1
        if not bool(torch.isfinite(v).all()):
            raise SolverError(
                f"the velocity is not finite at t = {float(t):.4g} ({self.solver}, evaluation "
                f"{self.count}): the model's weights or inputs hold NaN or inf"
            )
        if self.count > self.limit:
            raise SolverError(
                f"{self.solver} went past its limit of {self.limit} velocity evaluations at t = "
                f"{float(t):.4g}: the field is too stiff for this rtol/atol (a diverged model?). "
                f"Loosen rtol/atol, raise max_nfe or use a fixed-step solver"
            )


def check_solver(solver: str, steps: int) -> None:
    """A ValueError for an unknown solver or a fixed-step solver without steps."""
    if solver not in FIXED_STEP and solver not in ADAPTIVE:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(FIXED_STEP) + list(ADAPTIVE)}")
    if solver in FIXED_STEP and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def solve(
    dynamics: Callable[[Tensor, Any], Any],
    state: Tensor | tuple[Tensor, ...],
    times: Tensor,
    solver: str = "dopri5",
    steps: int = 100,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    max_nfe: int = MAX_NFE,
) -> tuple[Any, int]:
    """Integrate d state/dt = dynamics(t, state) (a tensor or a tuple of them, the first one the velocity that is
    checked) over `times` [T] (increasing or decreasing); returns the states at those times and the evaluations.

    Fixed-step solvers ("euler", "heun", "rk4") take `steps` equal steps over [times[0], times[-1]]; adaptive ones
    ("dopri5", ...) use rtol/atol, and their last step is cut to end at times[-1] exactly: torchdiffeq steps past
    the end and interpolates back, and a network trained on t ∈ [0, 1] must not be read outside it (scipy's RK45
    does the same)."""
    check_solver(solver, steps)
    evaluations = Evaluations(solver, max_nfe)

    def counted(t: Tensor, s):
        out = dynamics(t, s)
        evaluations.check(t, out[0] if isinstance(out, tuple) else out)
        return out

    if solver in FIXED_STEP:  # torchdiffeq runs a decreasing time grid itself
        options = {"step_size": float(abs(times[-1] - times[0])) / steps}
        path = odeint(counted, state, times, method=FIXED_STEP[solver], options=options)
    else:
        path = odeint(counted, state, times, method=solver, rtol=rtol, atol=atol, options={"step_t": times[-1:]})
    return path, evaluations.count


def integrate(
    field: Field,
    x0: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    solver: str = "dopri5",
    steps: int = 100,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    save: int | None = None,
    max_nfe: int = MAX_NFE,
) -> ODESolution:
    """Solve dx/dt = field(x, t) for x0 [N, ...] from t0 to t1 (solvers as in `solve`). `save` = k returns the
    states at k equally spaced times too (k ≥ 2, endpoints included)."""
    if save is not None and save < 2:
        raise ValueError(f"save must be at least 2 (both endpoints), got {save}")
    times = torch.linspace(t0, t1, save or 2, dtype=x0.dtype, device=x0.device)
    path, nfe = solve(
        lambda t, x: field(x, t.expand(x.shape[0])).detach(), x0, times, solver, steps, rtol, atol, max_nfe
    )
    if save is None:
        return ODESolution(path[-1], nfe)
    return ODESolution(path[-1], nfe, times, path)
