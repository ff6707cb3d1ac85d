"""A guided-diffusion style U-Net U(x, t[, c]) -> [N, C, H, W], the released backbone (docs/method.md §4).

The potential trains its gradient ∇ₓΦ, so every layer is differentiated twice. Only ops with an exact double
backward appear: convolutions, GroupNorm, SiLU, average pooling, nearest upsampling, and softmax attention written
out, since `F.scaled_dot_product_attention` has no double backward on CPU nor in its fused GPU kernels. Eagerly, a
Ritz step costs about 3x a flow-matching step (the double backward of convolutions, GroupNorm and SiLU runs as
many small kernels); `torch.compile` of v = torch.func.grad(Φ) fuses them. Heads that turn U into a scalar Φ live
in `vpfb.potentials.heads`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

UNET_CONFIGS = {
    # The released CIFAR-10 network: 128 channels with mult (2, 2, 2), so 256 channels at 32, 16 and 8 pixels;
    # no convolutions in the resampling layers; 55.7M parameters. CelebA 64x64 used the same settings (attention
    # at downsampling rate 2, i.e. 32 pixels).
    "cifar10": dict(
        in_channels=3,
        image_size=32,
        model_channels=128,
        channel_mult=(2, 2, 2),
        num_res_blocks=4,
        attention_resolutions=(16,),
        num_heads=1,
        dropout=0.3,
    ),
    "celeba64": dict(
        in_channels=3,
        image_size=64,
        model_channels=128,
        channel_mult=(2, 2, 2),
        num_res_blocks=4,
        attention_resolutions=(32,),
        num_heads=1,
        dropout=0.3,
    ),
    # Small settings that train on a CPU: 1.07M and 0.18M parameters.
    "mnist5k-cpu": dict(
        in_channels=1,
        image_size=28,
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(7,),
        num_heads=1,
        dropout=0.1,
    ),
    "digits-cpu": dict(
        in_channels=1,
        image_size=8,
        model_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_heads=1,
        dropout=0.0,
    ),
}


def unet_config(name: str) -> dict:
    """Keyword arguments of `UNet` for a named setting: "cifar10", "celeba64", "mnist5k-cpu" or "digits-cpu"."""
    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown U-Net setting {name!r}; choose one of {sorted(UNET_CONFIGS)}")
    return dict(UNET_CONFIGS[name])


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of `channels` below 32 for narrow layers."""
    groups = min(32, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so a residual branch (or the whole output) starts at exactly 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(t: Tensor, dim: int, max_freq: float = 1000.0) -> Tensor:
    """[cos(ωₖt), sin(ωₖt)] [N, dim] of raw t ∈ [0, 1], with ωₖ geometric from 1 to `max_freq` rad.

    ω = 1 makes the slowest pair monotone over [0, 1] (an unambiguous coarse position); ω = 1000 resolves Δt ≈
    1e-3, as DDPM's embedding of 1000·t does. (Feeding raw t to DDPM's max_period = 10⁴, as the released code
    does, leaves all frequencies in [1e-4, 1]: nearly every feature is then constant or linear in t.)
    """
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half, device=t.device, dtype=t.dtype))
    args = t[:, None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


class ResBlock(nn.Module):
    """skip(x) + conv₂(dropout(SiLU(GN(conv₁(SiLU(GN x)))·(1 + s) + b))), (s, b) = Linear(e) (scale-shift
    norm), or GN(h + Linear(e)) without it, or no modulation when there is no embedding e; conv₂ starts at 0."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int | None, dropout: float, scale_shift: bool):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.scale_shift = scale_shift
        self.emb = None if emb_dim is None else nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out)
        self.norm2, self.dropout = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is None:
            h = self.norm2(h)
        elif self.scale_shift:
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + self.emb(emb)[:, :, None, None])
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class SelfAttention(nn.Module):
    """x + proj(softmax(qᵀk/√d) v) over the H·W positions; q, k, v from one 1x1 conv, split before the heads."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads must be a positive divisor of the channels ({channels}), got {num_heads}")
        self.num_heads = num_heads
        self.norm, self.qkv = group_norm(channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        d = c // self.num_heads
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, d, height * width).unbind(1)
        # Plain softmax attention: its double backward exists everywhere and is exact.
        weights = torch.softmax(q.transpose(-1, -2) @ (k * d**-0.5), dim=-1)  # [n, heads, queries, keys]
        out = (v @ weights.transpose(-1, -2)).reshape(n, c, height, width)
        return x + self.proj(out)


class EmbedSequential(nn.Sequential):
    """A chain of layers in which the residual blocks also read the embedding."""

    def forward(self, h: Tensor, emb: Tensor | None) -> Tensor:
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


def _level_sizes(
    in_channels, image_size, model_channels, channel_mult, num_res_blocks, attention_resolutions, num_classes
) -> list[int]:
    """Check a U-Net's settings; return each level's image size in pixels."""
    if min(in_channels, model_channels, num_res_blocks, len(channel_mult), *channel_mult) < 1:
        raise ValueError("in_channels, model_channels, num_res_blocks and channel_mult must be positive")
    if image_size < 1 or image_size % 2 ** (len(channel_mult) - 1):
        raise ValueError(
            f"image_size {image_size} must be divisible by 2^{len(channel_mult) - 1} for {len(channel_mult)} levels"
        )
    sizes = [image_size // 2**k for k in range(len(channel_mult))]
    if not set(attention_resolutions) <= set(sizes):
        raise ValueError(
            f"attention_resolutions {tuple(attention_resolutions)} must be among the levels' image sizes {sizes}"
        )
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be positive or None, got {num_classes}")
    return sizes


class UNet(nn.Module):
    """U(x, t[, c]) [N, C, H, W]: guided diffusion's U-Net with an embedding of raw t ∈ [0, 1] (and of the label).

    Args:
        in_channels, image_size: the images' C and H = W.
        model_channels, channel_mult: level k has model_channels·channel_mult[k] channels at image_size/2ᵏ pixels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: image sizes in pixels (e.g. (16,)) with self-attention; the middle always has it.
        num_classes: class-conditional when set; label `num_classes` is the null label (a zero embedding).
        time_varying: False gives an autonomous U(x[, c]) that ignores t and has no time embedding.
        max_freq: highest frequency (rad per unit t) of the sinusoidal time embedding.
        image_output: False builds the trunk alone (`features`, no output norm and conv), for `ScalarHead`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        model_channels: int = 128,
        channel_mult: tuple[int, ...] = (2, 2, 2),
        num_res_blocks: int = 4,
        attention_resolutions: tuple[int, ...] = (16,),
        num_heads: int = 1,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        num_classes: int | None = None,
        time_varying: bool = True,
        max_freq: float = 1000.0,
        image_output: bool = True,
    ):
        super().__init__()
        sizes = _level_sizes(
            in_channels, image_size, model_channels, channel_mult, num_res_blocks, attention_resolutions, num_classes
        )
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.model_channels, self.time_varying, self.max_freq = model_channels, time_varying, max_freq
        emb_dim = 4 * model_channels if time_varying or num_classes is not None else None
        self.time_embed = (
            nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if time_varying
            else None
        )
        self.label_embed = (
            None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim, padding_idx=num_classes)
        )

        def res_block(c_in, c_out):
            return ResBlock(c_in, c_out, emb_dim, dropout, use_scale_shift_norm)

        def attention(ch, size):
            return [SelfAttention(ch, num_heads)] if size in attention_resolutions else []

        ch = model_channels * channel_mult[0]
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        skips, self.down = [ch], nn.ModuleList()
        for level, (mult, size) in enumerate(zip(channel_mult, sizes)):
            for _ in range(num_res_blocks):
                self.down.append(
                    EmbedSequential(res_block(ch, model_channels * mult), *attention(model_channels * mult, size))
                )
                ch = model_channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:  # the released network resamples without convolutions
                self.down.append(EmbedSequential(nn.AvgPool2d(2)))
                skips.append(ch)
        self.middle = EmbedSequential(res_block(ch, ch), SelfAttention(ch, num_heads), res_block(ch, ch))
        self.up = nn.ModuleList()
        for level, (mult, size) in reversed(list(enumerate(zip(channel_mult, sizes)))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skips.pop(), model_channels * mult), *attention(model_channels * mult, size)]
                ch = model_channels * mult
                if level > 0 and i == num_res_blocks:
                    layers.append(nn.Upsample(scale_factor=2.0, mode="nearest"))
                self.up.append(EmbedSequential(*layers))
        self.feature_channels, self.image_output = ch, image_output
        if image_output:
            self.out_norm, self.out_conv = group_norm(ch), zero_init(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        if not self.image_output:
            raise RuntimeError("this U-Net was built with image_output=False: use features(), or a ScalarHead")
        return self.out_conv(F.silu(self.out_norm(self.features(x, t, c))))

    def features(self, x: Tensor, t: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        """The last decoder feature map h [N, feature_channels, H, W], before the output norm and conv."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected images of shape [N, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}], got {tuple(x.shape)}"
            )
        emb = self.embedding(x, t, c)
        h = self.input_conv(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return h

    def embedding(self, x: Tensor, t: Tensor | None, c: Tensor | None) -> Tensor | None:
        """SiLU(time embedding + label embedding) [N, 4·model_channels], or None for an unconditional
        autonomous net. The SiLU every block applies first is applied once here."""
        n, emb = x.shape[0], None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("this U-Net is time-varying: pass t of shape [N] (or a scalar)")
            # At least float32 for the phases: ω·t reaches 1000 rad, which half precision cannot resolve.
            t = torch.as_tensor(t, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device).reshape(-1)
            if t.numel() not in (1, n):
                raise ValueError(f"t must have 1 or N = {n} entries, got shape {tuple(t.shape)}")
            features = sinusoidal_embedding(t.expand(n), self.model_channels, self.max_freq).to(x.dtype)
            emb = self.time_embed(features)
        if self.label_embed is None:
            if c is not None:
                raise ValueError("labels c were given to an unconditional U-Net (num_classes=None)")
            return None if emb is None else F.silu(emb)
        if c is None:
            c = torch.full((n,), self.num_classes, dtype=torch.long, device=x.device)
        if c.shape != (n,) or c.dtype.is_floating_point or c.dtype == torch.bool:
            raise ValueError(f"labels c must be integers of shape [{n}], got {c.dtype} {tuple(c.shape)}")
        if n and (int(c.min()) < 0 or int(c.max()) > self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} is the null label)")
        label = self.label_embed(c)
        return F.silu(label if emb is None else emb + label)
