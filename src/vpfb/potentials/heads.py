"""Heads that turn an image backbone into a scalar potential Φ(x, t[, c]) [N] (docs/method.md §4).

Both are differentiated twice in training (the loss reads ∇ₓΦ), so they add only smooth ops.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vpfb.potentials.unet import group_norm, zero_init


class AEEnergy(nn.Module):
    """Φ(x, t[, c]) = ½‖x − U(x, t, c)‖², summed over pixels: the released autoencoder energy.

    ∇ₓΦ = r − J_Uᵀr with r = x − U. With U's zero-initialised output conv, U ≡ 0 and Φ = ½‖x‖² at initialisation.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor, t: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        residual = x - self.backbone(x, t, c)
        return 0.5 * residual.flatten(1).square().sum(1)


class ScalarHead(nn.Module):
    """Φ(x, t[, c]) = wᵀ mean_pixels SiLU(GN(h)) + b with h = backbone.features(x, t, c); w, b start at 0.

    The backbone needs `features(x, t, c)` -> [N, K, H, W] and `feature_channels` = K (UNet, WideResNet).
    Φ ≡ 0 at initialisation; its gradient in w is the pooled features, so the head still learns from step one.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.norm = group_norm(backbone.feature_channels)
        self.linear = zero_init(nn.Linear(backbone.feature_channels, 1))

    def forward(self, x: Tensor, t: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        h = F.silu(self.norm(self.backbone.features(x, t, c)))
        return self.linear(h.mean(dim=(2, 3))).squeeze(1)
