"""Out-of-distribution test sets as float images in [-1, 1] of a model's shape, ready for `ood_table`.

A protocol names an in-distribution set and the OOD sets to tell apart from it. "cifar10" is the paper's
(docs/method.md §6): a CIFAR-10 model, its test images against SVHN, CIFAR-100, CelebA and interpolations of CIFAR-10
test images (the paper's AUROCs of Φ_B at t = 1: 0.61, 0.67, 0.84, 0.78). "synthetic" needs no download: the run's
own held-out images against far sets (noise, constant, inverted, scikit-learn's digits) and near ones (rotated,
blurred, shifted, and 0.5/0.5 mixes of two of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from vpfb.data import ImageData, load_images

Source = tuple[str, str]  # (named image set, split)
Derived = Callable[[ImageData, Tensor, Optional[torch.Generator]], dict[str, Tensor]]  # (set, batch, generator)
SET_CHANNELS = {"cifar10": 3, "cifar100": 3, "svhn": 3, "celeba": 3, "mnist": 1, "fashion-mnist": 1}


def synthetic_ood_sets(x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
    """Out-of-distribution images of the same shape, made from nothing but the in-distribution batch x ∈ [-1, 1]:
    far sets (uniform noise, constant images, inverted images, scikit-learn's 8×8 digits upscaled) and near ones
    (rotations by 90° and 180°, a Gaussian blur of σ = 1 pixel, a shift by 3 pixels right and down).

    Args:
        x: [N, C, H, W] in-distribution images in [-1, 1] (square for the rotations to keep the shape).
        generator: draws the uniform noise and the constants.
    Returns:
        {set name: [N, C, H, W]} for "uniform noise", "constant", "inverted", "rotated 90°", "rotated 180°",
        "blurred", "shifted 3 px" and "digits 8×8 upscaled" (the digits cycled to N, bilinear, grey repeated to C).
    """
    n, c, h, w = x.shape
    sets = {
        "uniform noise": torch.rand(x.shape, generator=generator) * 2 - 1,
        "constant": (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1).expand_as(x).contiguous(),
        "inverted": -x,
        "rotated 90°": torch.rot90(x, 1, (2, 3)),
        "rotated 180°": torch.rot90(x, 2, (2, 3)),
        "blurred": gaussian_blur(x, 1.0),
        "shifted 3 px": shifted(x, 3),
    }
    digits = load_images("digits")
    digits = digits.batch(torch.arange(n) % len(digits))
    sets["digits 8×8 upscaled"] = F.interpolate(digits, size=(h, w), mode="bilinear").expand(n, c, h, w).contiguous()
    return sets


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """x [N, C, H, W] convolved per channel with a normalised Gaussian of std `sigma` pixels (edges reflected)."""
    radius = max(1, round(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    taps = (taps / taps.sum()).to(x.device)
    c = x.shape[1]
    y = F.pad(x, (radius,) * 4, mode="reflect")
    y = F.conv2d(y, taps.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, taps.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def shifted(x: Tensor, pixels: int) -> Tensor:
    """x moved `pixels` right and down, the uncovered border filled with the nearest edge pixels."""
    h, w = x.shape[-2:]
    return F.pad(x, (pixels, 0, pixels, 0), mode="replicate")[..., :h, :w]


def interpolated_images(
    images: Tensor, n: int, generator: torch.Generator | None = None, weight: float = 0.5
) -> Tensor:
    """n mixtures λa + (1 − λ)b, λ = weight, of two images a ≠ b (distinct indices) of `images` [N, C, H, W],
    each pair drawn uniformly; λ = 0.5, the even blend, is the "interpolation" set of JEM/CDRL-style tables.

    Args:
        images: [N, C, H, W], N ≥ 2.
        n: how many mixtures, at least 1.
        generator: draws the pairs.
        weight: λ ∈ [0, 1].
    Returns:
        [n, C, H, W] mixtures on the images' device.
    """
    if len(images) < 2:
        raise ValueError(f"interpolations mix two distinct images; got {len(images)}")
    _check_n(n)
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    a = torch.randint(len(images), (n,), generator=generator)
    b = (a + torch.randint(1, len(images), (n,), generator=generator)) % len(images)  # uniform over the others
    index = torch.stack([a, b]).to(images.device)
    return weight * images[index[0]] + (1 - weight) * images[index[1]]


def _interpolations(data: ImageData, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
    """Mixtures of pairs drawn afresh from the whole in-distribution split, not only from the batch x."""
    pool = _draw(data, min(2 * len(x), len(data)), x.shape[1], generator, f"{data.name} interpolation")
    return {f"{data.name} interpolation": interpolated_images(pool, len(x), generator)}


def _synthetic(data: ImageData, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
    return {**synthetic_ood_sets(x, generator), **_interpolations(data, x, generator)}


@dataclass(frozen=True)
class Protocol:
    """An in-distribution split against OOD splits of named sets, plus OOD sets `derived` from the in-distribution
    set and the batch drawn from it. in_distribution None: the run's own data, passed to protocol_sets as `own`."""

    in_distribution: Source | None
    ood: dict[str, Source]
    derived: Derived | None = None

    def __post_init__(self) -> None:
        sources = [*self.ood.values(), *([self.in_distribution] if self.in_distribution else [])]
        unknown = [image_set for image_set, _ in sources if image_set not in SET_CHANNELS]
        if unknown:
            raise ValueError(f"protocols draw from the named sets {', '.join(SET_CHANNELS)}; got {unknown}")

    @property
    def channels(self) -> int | None:
        """Channels of the models it tests: those of its in-distribution set (None: any)."""
        return SET_CHANNELS[self.in_distribution[0]] if self.in_distribution else None


PROTOCOLS: dict[str, Protocol] = {
    "cifar10": Protocol(
        ("cifar10", "test"),
        {"svhn": ("svhn", "test"), "cifar100": ("cifar100", "test"), "celeba": ("celeba", "test")},
        _interpolations,
    ),
    "fashion-mnist": Protocol(("fashion-mnist", "test"), {"mnist": ("mnist", "test")}, _interpolations),
    "mnist": Protocol(("mnist", "test"), {"fashion-mnist": ("fashion-mnist", "test")}, _interpolations),
    "synthetic": Protocol(None, {}, _synthetic),
}


def protocol_sets(
    name: str,
    shape: tuple[int, int, int],
    n: int,
    root: str | Path | None = None,
    generator: torch.Generator | None = None,
    download: bool = False,
    own: ImageData | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """n in-distribution images and n of every OOD set of protocol `name`, floats in [-1, 1] of `shape` (C, H, W),
    each set drawn without replacement by `generator`, in the protocol's order.

    Named sets load from `root` (load_images' default: $VPFB_DATA, else ~/.cache/vpfb/data) at H × W: resized,
    MNIST sets padded 28 → 32, CelebA the authors' centre crop 140 resized. A grey OOD set against an RGB model has
    its grey repeated in R, G and B; the in-distribution set must have the model's channels. "synthetic" draws its
    in-distribution images from `own`, the run's data, which must have `shape`.

    Args:
        name: a protocol of PROTOCOLS: "cifar10", "fashion-mnist", "mnist" or "synthetic".
        shape: the model's (C, H, W), square, with the in-distribution set's channels (any for "synthetic").
        n: images per set, at least 1 and at most the size of each set.
        root: where the named sets are. download: fetch a missing named set.
        own: the run's images (ImageData), for "synthetic" only and needed there.
    Returns:
        (x [n, C, H, W] in-distribution, {OOD set name: [n, C, H, W]}): the named sets, then those derived from the
        in-distribution set (interpolations of pairs from its whole split; for "synthetic" also `synthetic_ood_sets`).
    """
    protocol = _protocol(name)
    shape = _check_shape(name, protocol, shape)
    _check_n(n)
    _check_own(name, protocol, own)
    channels, size = shape[0], shape[1]
    if own is not None and own.shape != shape:
        raise ValueError(f"own images are {own.shape}, the model takes {shape}")
    data = own if own is not None else _load(name, protocol.in_distribution, size, root, download)
    x = _draw(data, n, channels, generator, f"the in-distribution set {data.name}")
    sets = {
        ood: _draw(_load(name, source, size, root, download), n, channels, generator, ood)
        for ood, source in protocol.ood.items()
    }
    return x, {**sets, **(protocol.derived(data, x, generator) if protocol.derived else {})}


def reference_images(
    name: str,
    shape: tuple[int, int, int],
    n: int,
    root: str | Path | None = None,
    generator: torch.Generator | None = None,
    download: bool = False,
    own: ImageData | None = None,
) -> Tensor:
    """Up to n in-distribution images of protocol `name` from a training split, never the images it scores: what a
    score fitted to the in-distribution set (MultiscaleEnergy) is fitted on. "synthetic" takes the run's own
    training split as `own`.

    Args:
        name, shape, root, download, own: as `protocol_sets`.
        n: at most this many images, at least 1.
        generator: draws them without replacement.
    Returns:
        [min(n, size of the split), C, H, W] floats in [-1, 1].
    """
    protocol = _protocol(name)
    shape = _check_shape(name, protocol, shape)
    _check_n(n)
    _check_own(name, protocol, own)
    data = own if own is not None else _load(name, (protocol.in_distribution[0], "train"), shape[1], root, download)
    return _draw(data, min(n, len(data)), shape[0], generator, f"the training split of {data.name}")


def _protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown OOD protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _check_own(name: str, protocol: Protocol, own: ImageData | None) -> None:
    """The run's own images are given exactly when the protocol has no in-distribution set of its own."""
    if own is None and protocol.in_distribution is None:
        raise ValueError(f"protocol {name!r} tests the run's own images: pass them as own=ImageData")
    if own is not None and protocol.in_distribution is not None:
        raise ValueError(
            f"protocol {name!r} brings its own in-distribution set; own= is for the 'synthetic' protocol only"
        )


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def _check_shape(name: str, protocol: Protocol, shape) -> tuple[int, int, int]:
    """shape as a tuple, if the protocol's sets can be brought to it: square, with the in-distribution channels."""
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be an image shape (C, H, W), got {shape}")
    c, h, w = shape
    if h != w:
        raise ValueError(f"OOD protocols bring images to a square size; the model takes {c}×{h}×{w} images")
    if protocol.channels not in (None, c):
        fitting = [p for p, other in PROTOCOLS.items() if other.channels in (None, c)]
        raise ValueError(
            f"protocol {name!r} tests models of {protocol.in_distribution[0]} "
            f"({protocol.channels} channels); this model takes {c}×{h}×{w} images: use protocol "
            f"{' or '.join(map(repr, fitting))}"
        )
    return shape


def _load(name: str, source: Source, size: int, root, download: bool) -> ImageData:
    image_set, split = source
    try:
        return load_images(image_set, root=root, split=split, image_size=size, download=download, labels=False)
    except FileNotFoundError as err:  # load_images says where it looked and about download=True
        raise FileNotFoundError(
            f"OOD protocol {name!r} needs the {split} split of {image_set}: {err}; from the "
            f"command line: vpfb eval RUN --task ood --protocol {name} --download"
        ) from err


def _draw(data: ImageData, n: int, channels: int, generator: torch.Generator | None, what: str) -> Tensor:
    """n distinct images of data in [-1, 1], grey ones repeated to `channels`."""
    if n > len(data):
        raise ValueError(f"{what} holds {len(data)} images, fewer than the n = {n} asked for")
    x = data.batch(torch.randperm(len(data), generator=generator)[:n])
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    raise ValueError(f"{what} has RGB images, which a {channels}-channel model cannot score")
