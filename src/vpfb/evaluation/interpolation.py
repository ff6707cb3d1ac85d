"""Interpolation through the prior: slerp between two noises (norm kept), then the flow; real samples are first
inverted to the prior by running the ODE backwards."""

from __future__ import annotations

import torch
from torch import Tensor

from vpfb.model import EnergyModel


def slerp(z0: Tensor, z1: Tensor, alphas: Tensor) -> Tensor:
    """Points [len(alphas), *z0.shape] along the great circle from z0 to z1, with the norm interpolated linearly:
    ‖z(α)‖ = (1 − α)‖z0‖ + α‖z1‖ (so constant for equal norms) and z(0) = z0, z(1) = z1.

    Args:
        z0, z1: two nonzero points of one shape (e.g. [*shape]); nearly parallel ones are joined along the line.
        alphas: [K] positions α, 0 at z0 and 1 at z1.
    Returns:
        [K, *z0.shape] points, in z0's dtype and on its device.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs two points of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    n0, n1 = z0.norm(), z1.norm()
    u0, u1 = z0 / n0, z1 / n1
    theta = torch.arccos((u0 * u1).sum().clamp(-1, 1))
    a = alphas.to(z0).reshape(-1, *[1] * z0.dim())
    if theta < 1e-6:  # (nearly) parallel: the great circle degenerates to the line
        direction = (1 - a) * u0 + a * u1
    else:
        direction = (torch.sin((1 - a) * theta) * u0 + torch.sin(a * theta) * u1) / torch.sin(theta)
    direction = direction / direction.flatten(1).norm(dim=1).reshape_as(a)
    return ((1 - a) * n0 + a * n1) * direction


def interpolate(
    model: EnergyModel,
    steps: int = 8,
    x_a: Tensor | None = None,
    x_b: Tensor | None = None,
    generator: torch.Generator | None = None,
    **ode,
) -> dict[str, Tensor]:
    """Samples along a slerp in the prior between two endpoints: fresh noises, or the inverted samples x_a, x_b.
    Returns the samples [steps, ...], their log_density (the energy along the path) and the prior points.

    Args:
        model: the trained model.
        steps: points along the path, at least 2, with α evenly spaced in [0, 1].
        x_a, x_b: [*shape] endpoints in user units, carried to the prior by `EnergyModel.invert`; both or neither.
        generator: draws the two noises z ~ N(0, I) when no endpoints are given.
        ode: the ODE's solver and tolerances (`EnergyModel.flow`'s solver, rtol, atol), for inverting and flowing.
    Returns:
        {"samples": [steps, *shape] in user units, "log_density": [steps] at the model's read-out time,
        "prior": [steps, *shape] the slerp's points (standardised units)}.
    """
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 points, got {steps}")
    if (x_a is None) != (x_b is None):
        raise ValueError("give both endpoints x_a and x_b, or neither")
    if x_a is None:
        z = torch.randn(2, *model.shape, generator=generator).to(model.device)
    else:
        z = model.invert(torch.stack([torch.as_tensor(x_a), torch.as_tensor(x_b)]), **ode)
    path = slerp(z[0], z[1], torch.linspace(0, 1, steps))
    x = model.flow_from(path, **ode).x
    return {"samples": x, "log_density": model.log_density(x), "prior": path}
