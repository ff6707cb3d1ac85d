"""Figures for 2-D models: ODE trajectories, an energy surface with Langevin samples, density against truth."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from vpfb.likelihood import grid_log_normaliser  # noqa: E402
from vpfb.ode import ODESolution  # noqa: E402


def _grid(low: Tensor, high: Tensor, points: int) -> tuple[Tensor, Tensor, Tensor]:
    xs, ys = (torch.linspace(float(low[i]), float(high[i]), points) for i in range(2))
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return gx, gy, torch.stack([gx.flatten(), gy.flatten()], 1)


def plot_density(
    ax, log_density: Callable[[Tensor], Tensor], low: Tensor, high: Tensor, points: int = 200, title: str = ""
) -> None:
    """Normalised density exp(log p − log Z) on the box as an image."""
    gx, gy, grid = _grid(low, high, points)
    log_z = grid_log_normaliser(log_density, low, high, points)
    dens = (log_density(grid).detach().double().cpu() - log_z).exp().reshape(gx.shape)
    ax.pcolormesh(gx.numpy(), gy.numpy(), dens.float().numpy(), shading="auto", cmap="viridis")
    ax.set_title(title), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])


def plot_trajectories(ax, solution: ODESolution, max_paths: int = 400, title: str = "ODE trajectories") -> None:
    """Paths of dx/dt = ∇Φ from prior (grey) to samples (colour)."""
    traj = solution.trajectory[:, :max_paths].cpu().numpy()
    ax.plot(traj[:, :, 0], traj[:, :, 1], color="0.6", lw=0.3, alpha=0.5)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, color="0.3", label="t = 0")
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, color="C1", label="t = 1")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    ax.set_title(title), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])


def plot_samples(ax, x: Tensor, low: Tensor, high: Tensor, title: str = "", color: str = "C3") -> None:
    x = x.detach().cpu().numpy()
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color=color)
    ax.set_xlim(float(low[0]), float(high[0])), ax.set_ylim(float(low[1]), float(high[1]))
    ax.set_title(title), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])


def save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def figure(columns: int, size: float = 3.2):
    return plt.subplots(1, columns, figsize=(size * columns, size))


def image_grid(images: Tensor, columns: int | None = None) -> Tensor:
    """Images [N, C, H, W] in [-1, 1] tiled into one uint8 picture [H', W', C] with 1-pixel gaps."""
    n, c, h, w = images.shape
    columns = columns or max(1, int(n**0.5))
    rows = -(-n // columns)
    canvas = torch.ones(c, rows * (h + 1) + 1, columns * (w + 1) + 1)
    for i, img in enumerate(images.detach().float().cpu().clamp(-1, 1)):
        r, k = divmod(i, columns)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img
    return ((canvas + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)


def save_image_grid(images: Tensor, path: str | Path, columns: int | None = None, title: str = "") -> Path:
    """Write an image grid as a PNG (grey for one channel), pixel for pixel, or under a `title` line."""
    grid = image_grid(images, columns).numpy()
    grid = grid[..., 0] if grid.shape[-1] == 1 else grid
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not title:
        plt.imsave(path, grid, cmap="gray", vmin=0, vmax=255)
        return path
    height, width = grid.shape[:2]
    fig = plt.figure(figsize=(max(width, 320) / 100, (height + 24) / 100), dpi=100)
    fig.text(0.5, 1 - 12 / (height + 24), title, ha="center", va="center", fontsize=7)
    ax = fig.add_axes((0, 0, 1, height / (height + 24)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_long_run(runs: dict, path: str | Path) -> Path:
    """Long-run diagnostics against time: E‖∇Φ‖² (log scale) and EΦ, one line per method."""
    fig, axes = figure(2)
    for name, run in runs.items():
        axes[0].plot(run.times, run.mean_grad_sq, marker="o", label=name)
        axes[1].plot(run.times, run.mean_phi, marker="o", label=name)
    axes[0].set(yscale="log", xlabel="t", title="mean ‖∇Φ‖²")
    axes[1].set(xlabel="t", title="mean Φ")
    axes[0].legend()
    return save(fig, path)


def save_score_histograms(scored: dict[str, dict[str, Tensor]], path: str | Path) -> Path:
    """One panel per score: histograms of the in-distribution scores and of every OOD set's (higher = more
    in-distribution) on a range set by the in-distribution scores (their 1st–99th percentiles, widened 3× below
    and 1× above), so that near sets stay readable; far sets pile up in the edge bins."""
    from vpfb.evaluation.ood import IN_DISTRIBUTION

    fig, axes = figure(len(scored), size=3.6)
    axes = list(axes) if len(scored) > 1 else [axes]
    for ax, (score, sets) in zip(axes, scored.items()):
        reference = sets[IN_DISTRIBUTION].double()
        q01, q99 = (torch.quantile(reference, q).item() for q in (0.01, 0.99))
        spread = max(q99 - q01, 1e-6)
        low, high = q01 - 3 * spread, q99 + spread
        for name, values in sets.items():
            ax.hist(
                values.double().clamp(low, high).numpy(),
                bins=40,
                range=(low, high),
                histtype="step",
                density=True,
                label=name,
                linewidth=2 if name == IN_DISTRIBUTION else 1,
            )
        ax.set(title=score, xlabel="score (higher = in-distribution)")
    axes[0].legend(fontsize=7)
    return save(fig, path)
