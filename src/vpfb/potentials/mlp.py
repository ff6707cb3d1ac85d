"""Multilayer perceptrons on vectors: a scalar potential Φ(x, t) or Φ(x), and the same trunk with a vector head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """SiLU MLP on [x, t] (or x alone when autonomous) returning [N, out_dim]."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_varying: bool = True, out_dim: int = 1):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}")
        self.dim, self.time_varying = dim, time_varying
        widths = [dim + int(time_varying)] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(hidden, out_dim)

    def inputs(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape [N, {self.dim}], got {tuple(x.shape)}")
        if not self.time_varying:
            return x
        return torch.cat([x, t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)], dim=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.inputs(x, t)
        for layer in self.layers:
            h = F.silu(layer(h))
        return self.head(h)


class MLPPotential(MLP):
    """Scalar potential Φ(x, t) [N] from an MLP; autonomous (time_varying=False) ignores t."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_varying: bool = True):
        super().__init__(dim, hidden, depth, time_varying, out_dim=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return super().forward(x, t).squeeze(-1)

    def value_and_velocity(self, x: Tensor, t: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor]:
        """Φ [N] and ∇ₓΦ [rows] (of the first `rows` samples; all by default) in one pass, the backward sweep
        written out (∇ = W₁ᵀ diag(silu'(z₁)) ⋯ wₒᵤₜ), so that a loss on ∇Φ is differentiated through a
        first-order graph instead of autograd's double backward."""
        h = self.inputs(x, t)
        slopes = []
        for layer in self.layers:
            z = layer(h)
            s = torch.sigmoid(z)
            h = z * s
            slopes.append((s + h * (1 - s))[:rows])  # silu'(z) = σ(z)(1 + z(1 − σ(z)))
        grad = self.head.weight.expand(slopes[-1].shape[0], -1)
        for layer, slope in zip(reversed(self.layers), reversed(slopes)):
            grad = (grad * slope) @ layer.weight
        return self.head(h).squeeze(-1), grad[:, : self.dim]
