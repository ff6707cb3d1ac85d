"""What every potential shares: Φ maps (x [N, ...], t [N]) to a scalar per sample, and v = ∇ₓΦ."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Potential = Callable[[Tensor, Tensor], Tensor]


def value_and_grad(fn: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Return a per-sample scalar field fn(x) [N] and its gradient ∇ₓ fn(x), even under torch.no_grad."""
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        value = fn(x)
        if value.shape != x.shape[:1]:
            raise ValueError(f"expected one scalar per sample, shape {tuple(x.shape[:1])}, got {tuple(value.shape)}")
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=create_graph)
    return value, grad


def potential_and_velocity(
    potential: Potential, x: Tensor, t: Tensor, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """Return Φ(x, t) [N] and v = ∇ₓΦ(x, t); create_graph=True only when Φ or v will be differentiated.

    A potential may compute both itself (`value_and_velocity(x, t)`, checked against autograd in the tests);
    otherwise autograd differentiates Φ.
    """
    own = getattr(potential, "value_and_velocity", None)
    if own is None:
        return value_and_grad(lambda y: potential(y, t), x, create_graph)
    with torch.set_grad_enabled(create_graph):
        return own(x, t)


def velocity(potential: Potential, x: Tensor, t: Tensor, create_graph: bool = False) -> Tensor:
    """The generative velocity v = +∇ₓΦ(x, t)."""
    return potential_and_velocity(potential, x, t, create_graph)[1]
