"""The autonomous potential Φ(x) on images: a pre-activation WideResNet with a scalar head (docs/method.md §4).

Two departures from the classifier WRN, both forced by training ∇ₓΦ:
- SiLU, not ReLU. A ReLU network is piecewise linear in x, so ∇ₓΦ is piecewise constant and its Jacobian
  ∇²ₓΦ is zero almost everywhere: the flow dx/dt = ∇Φ then has divergence ΔΦ = 0, preserves volume and cannot
  turn the prior's density into the data's, and the likelihood, which integrates ΔΦ, sees nothing. The loss,
  which differentiates ∇ₓΦ again, also gets no signal from the activations' curvature.
- GroupNorm, not BatchNorm. BatchNorm couples the samples of a batch, so Φ(xᵢ) would depend on the other xⱼ,
  ∇ₓΦ summed over the batch would carry cross-sample terms, and training and evaluation would differ.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vpfb.potentials.heads import ScalarHead
from vpfb.potentials.unet import group_norm


class WideBlock(nn.Module):
    """skip(x) + conv₂(dropout(SiLU(GN(conv₁(SiLU(GN x)))))), conv₁ strided when the block downsamples."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm2, self.dropout = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))


class WideResNet(nn.Module):
    """WRN-depth-k trunk: a 3x3 conv to 16 channels, then three groups of (depth − 4)/6 blocks with 16k, 32k and
    64k channels at full, half and quarter resolution. `features(x)` returns the last group's map."""

    def __init__(self, in_channels: int = 3, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, ...), got {depth}")
        if in_channels < 1 or widen_factor < 1:
            raise ValueError(f"in_channels and widen_factor must be positive, got {in_channels}, {widen_factor}")
        self.in_channels, blocks = in_channels, (depth - 4) // 6
        self.input_conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        layers, ch = [], 16
        for group, width in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor)):
            for i in range(blocks):
                layers.append(WideBlock(ch, width, 2 if group > 0 and i == 0 else 1, dropout))
                ch = width
        self.blocks = nn.Sequential(*layers)
        self.feature_channels = ch

    def features(self, x: Tensor, t: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        """The last feature map [N, 64k, ⌈H/4⌉, ⌈W/4⌉]; t is ignored (autonomous)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if c is not None:
            raise ValueError("labels c were given to an unconditional WideResNet")
        return self.blocks(self.input_conv(x))


class WideResNetPotential(ScalarHead):
    """Autonomous Φ(x) [N] = linear(mean_pixels SiLU(GN(WRN(x)))); forward(x, t=None, c=None) ignores t."""

    def __init__(self, in_channels: int = 3, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0):
        super().__init__(WideResNet(in_channels, depth, widen_factor, dropout))
