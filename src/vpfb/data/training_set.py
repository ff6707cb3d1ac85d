"""What training needs of any data, points or images alike: one batch source, its shape, its standardiser and a
fingerprint that names the data of a run. `fit` makes its one points/images choice here and trains both the same way."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vpfb import distributed
from vpfb.config import Config, ConfigError
from vpfb.data.images import ImageData, load_images
from vpfb.data.points import Standardizer
from vpfb.files import digest


class ImageBatches:
    """The trainer's view of image data: batch(index, generator) -> images [B, C, H, W] in [-1, 1] (dequantised and
    flipped at random when asked) or (images, labels) for a conditional model."""

    def __init__(self, data: ImageData, flip: bool, labels: bool, dequantize: bool = False):
        self.data, self.flip, self.labels, self.dequantize = data, flip, labels, dequantize

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, index: Tensor, generator: torch.Generator):
        x = self.data.batch(index, flip=self.flip, generator=generator, dequantize=self.dequantize)
        return (x, self.data.labels[index]) if self.labels else x


@dataclass
class TrainingSet:
    """rows: what the trainer draws batches from, standardised points [N, d] or ImageBatches; shape: one sample's;
    standardizer: x ↔ z for points, None for images (used as they are); points: the raw points (for calibrating the
    read-out time), None for images."""

    rows: Tensor | ImageBatches
    shape: tuple[int, ...]
    standardizer: Standardizer | None
    num_classes: int | None
    fingerprint: str
    points: Tensor | None = None

    @property
    def images(self) -> bool:
        return self.points is None


def point_set(points: Tensor) -> TrainingSet:
    """Points [N, d], standardised per column."""
    points = torch.as_tensor(points, dtype=torch.float32)
    if points.dim() != 2 or not torch.isfinite(points).all():
        raise ValueError(f"training points must be a finite [N, d] array, got shape {tuple(points.shape)}")
    standardizer = Standardizer.fit(points)
    return TrainingSet(
        standardizer.transform(points), tuple(points.shape[1:]), standardizer, None, digest({"points": points}), points
    )


def image_set(cfg: Config) -> TrainingSet:
    """The training split of cfg.data's image set (under torchrun rank 0 downloads it first, when asked)."""
    d, conditional = cfg.data, cfg.model.conditional
    world = distributed.current()
    if d.download and world.is_main:
        load_images(d.name, root=d.root or None, image_size=d.image_size or None, download=True)
    world.barrier()
    data = load_images(d.name, root=d.root or None, image_size=d.image_size or None, labels=conditional)
    if conditional and data.labels is None:
        raise ConfigError(f"model.conditional needs class labels, and {data.name} has none")
    fingerprint = digest({"images": data.images, **({"labels": data.labels} if conditional else {})})
    batches = ImageBatches(data, d.flip, conditional, d.dequantize)
    return TrainingSet(batches, data.shape, None, data.num_classes, fingerprint)
