"""Small tensor helpers shared by every layer (the bottom of the import graph: it imports only torch)."""

from __future__ import annotations

import torch
from torch import Tensor


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """View a per-sample value [N] as [N, 1, ..., 1] so it broadcasts against x [N, ...]."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def flat_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all non-batch dimensions: [N, ...] × [N, ...] → [N]."""
    return (a * b).flatten(1).sum(1)


def draw_like(sampler, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Random numbers shaped like `like` from `sampler` (torch.randn, torch.rand), drawn on the generator's device
    (a CPU generator may drive a GPU chain)."""
    device = generator.device if generator is not None else like.device
    return sampler(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
