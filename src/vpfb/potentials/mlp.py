"""Multilayer perceptrons on vectors: a scalar potential Φ(x, t) or Φ(x), and the same trunk with a vector head."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """SiLU MLP on [x, t] (or x alone when autonomous) returning [N, out_dim]."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_varying: bool = True, out_dim: int = 1):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}")
        self.dim, self.time_varying = dim, time_varying
        widths = [dim + int(time_varying)] + [hidden] * depth
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.SiLU()]
        layers.append(nn.Linear(hidden, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape [N, {self.dim}], got {tuple(x.shape)}")
        if self.time_varying:
            x = torch.cat([x, t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)], dim=1)
        return self.net(x)


class MLPPotential(MLP):
    """Scalar potential Φ(x, t) [N] from an MLP; autonomous (time_varying=False) ignores t."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_varying: bool = True):
        super().__init__(dim, hidden, depth, time_varying, out_dim=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return super().forward(x, t).squeeze(-1)
