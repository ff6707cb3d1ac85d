"""The 2-D experiment of the paper for one trained model: metrics on held-out points and three figures."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from vpfb import plots
from vpfb.evaluation.density import density_metrics
from vpfb.likelihood import grid_box
from vpfb.model import EnergyModel


def report_2d(
    model: EnergyModel,
    x_test: Tensor,
    out: str | Path,
    true_log_density: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    langevin_steps: int = 1500,
    langevin_step_size: float = 2e-3,
) -> dict[str, float]:
    """Write trajectories.png, boltzmann.png and density.png to `out`; return the density metrics.

    trajectories.png: the data and the ODE trajectories dx/dt = ∇Φ of 2000 flow samples (41 saved times);
    boltzmann.png: the energy density (ψ read at the model's read-out t) and 2000 unadjusted Langevin chains on it,
    started at the prior; density.png: the true density (or the data), the energy density and the ODE samples.

    Args:
        model: a trained 2-D point model.
        x_test: [N, 2] held-out points in user units; the plots' box is `grid_box(x_test, pad=0.15)`.
        out: output folder, created if missing.
        true_log_density: the data's log-density, x [N, 2] -> [N] (nats), when known.
        seed: seeds the flow samples and the chains' starts and noise.
        langevin_steps, langevin_step_size: the chains' steps and fixed step (standardised units).
    Returns:
        `density_metrics` (nats per point) on the same box, plus "nfe": the flow's function evaluations.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    low, high = grid_box(x_test, pad=0.15)
    metrics = density_metrics(model, x_test, true_log_density, box=(low, high))
    solution = model.flow(2000, save=41, generator=gen)
    metrics["nfe"] = float(solution.nfe)

    fig, axes = plots.figure(2)
    plots.plot_samples(axes[0], x_test, low, high, "data", color="C0")
    plots.plot_trajectories(axes[1], solution, title=f"ODE dx/dt = ∇Φ ({solution.nfe} NFE)")
    plots.save(fig, out / "trajectories.png")

    fig, axes = plots.figure(2)
    t = model.read_out_t
    plots.plot_density(axes[0], model.log_density, low, high, title=f"energy density (ψ read at t={t:g})")
    prior = model.standardizer.inverse(
        torch.randn(2000, 2, generator=gen).to(model.device)
    )  # chains start at the prior
    chains = model.sample_langevin(
        2000,
        steps=langevin_steps,
        step_size=langevin_step_size,
        x0=prior,
        generator=gen,
        metropolis=False,
        denoise=False,
    )
    plots.plot_samples(axes[1], chains, low, high, f"SGLD from the prior ({langevin_steps} steps)")
    plots.save(fig, out / "boltzmann.png")

    fig, axes = plots.figure(3)
    if true_log_density is not None:
        plots.plot_density(axes[0], true_log_density, low, high, title="true density")
    else:
        plots.plot_samples(axes[0], x_test, low, high, "data", color="C0")
    plots.plot_density(
        axes[1], model.log_density, low, high, title=f"model energy density (NLL {metrics['energy_nll']:.3f})"
    )
    plots.plot_samples(axes[2], solution.x, low, high, f"ODE samples (CNF NLL {metrics['cnf_nll']:.3f})")
    plots.save(fig, out / "density.png")
    return metrics
