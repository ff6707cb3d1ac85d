"""What every potential shares: Φ maps (x [N, ...], t [N]) to a scalar per sample, and v = ∇ₓΦ."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

Potential = Callable[[Tensor, Tensor], Tensor]


def value_and_grad(
    fn: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool = False, rows: int | None = None
) -> tuple[Tensor, Tensor]:
    """Return a per-sample scalar field fn(x) [N] and its gradient ∇ₓ fn(x) at the first `rows` samples (all by
    default), even under torch.no_grad."""
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        value = fn(x)
        if value.shape != x.shape[:1]:
            raise ValueError(f"expected one scalar per sample, shape {tuple(x.shape[:1])}, got {tuple(value.shape)}")
        (grad,) = torch.autograd.grad(value[:rows].sum(), x, create_graph=create_graph)
    return value, grad[:rows]


def potential_and_velocity(
    potential: Potential, x: Tensor, t: Tensor, create_graph: bool = False, rows: int | None = None
) -> tuple[Tensor, Tensor]:
    """Return Φ(x, t) [N] and v = ∇ₓΦ(x, t) [rows] of the first `rows` samples (all by default: a loss that also
    needs Φ alone at other points appends them, and pays one forward pass for both); create_graph=True only when
    Φ or v will be differentiated.

    A potential may compute both itself (`value_and_velocity(x, t, rows)`, checked against autograd in the tests);
    otherwise autograd differentiates Φ.
    """
    own = getattr(potential, "value_and_velocity", None)
    if own is None:
        return value_and_grad(lambda y: potential(y, t), x, create_graph, rows)
    with torch.set_grad_enabled(create_graph):
        return own(x, t, rows)


def velocity(potential: Potential, x: Tensor, t: Tensor, create_graph: bool = False) -> Tensor:
    """The generative velocity v = +∇ₓΦ(x, t)."""
    return potential_and_velocity(potential, x, t, create_graph)[1]


class CompiledVelocity:
    """`potential` with Φ and v = ∇ₓΦ computed by one `torch.compile`d `torch.func.grad_and_value`.

    Eager double backpropagation runs the second derivative of every convolution, norm and activation as many small
    kernels. Here AOTAutograd traces Φ together with its gradient as one graph, so the backward of that graph (the
    training step's second differentiation) is generated and fused as well. The weights stay the wrapped module's
    own; every other attribute (path, log_density, parameters, ...) is read from it. Calls with labels go to the
    eager module: a conditional potential differentiates its forward directly.
    """

    def __init__(self, potential: nn.Module, **compile_options):
        self.potential = potential

        def value_and_velocity(x: Tensor, t: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor]:
            def total(y: Tensor) -> tuple[Tensor, Tensor]:
                phi = potential(y, t)
                return phi[:rows].sum(), phi

            grad, (_, phi) = torch.func.grad_and_value(total, has_aux=True)(x)
            return phi, grad[:rows]

        self.value_and_velocity = torch.compile(value_and_velocity, **compile_options)

    def __call__(self, x: Tensor, t: Tensor, *labels: Tensor) -> Tensor:
        return self.potential(x, t, *labels)

    def __getattr__(self, name: str):
        if name == "potential":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.potential, name)
