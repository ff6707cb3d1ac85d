"""Data: 2-D toy sets with their true densities, user point files, and image sets (uint8, batched to [-1, 1])."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from vpfb.data.images import IMAGE_SETS, ImageData, load_images
from vpfb.data.points import POINT_FILES, Standardizer, load_points
from vpfb.data.toy2d import TOY_DATASETS, sample_toy, toy_log_density

__all__ = [
    "IMAGE_SETS",
    "POINT_FILES",
    "TOY_DATASETS",
    "ImageData",
    "Standardizer",
    "load_data",
    "load_images",
    "load_points",
    "sample_toy",
    "toy_log_density",
]


def load_data(spec: str, n: int = 20000, seed: int = 0, key: str | None = None) -> tuple[Tensor, str]:
    """Points [N, d] and a description: n points of the toy set `spec` drawn with `seed`, or the points of a file
    (of a .npz archive's array `key`)."""
    if spec in TOY_DATASETS:
        return sample_toy(spec, n, seed), f"{n} points of the toy set {spec!r} (seed {seed})"
    path = Path(spec)
    if path.suffix or path.exists():
        points = load_points(path, key)
        return points, f"{len(points)} points of dimension {points.shape[1]} from {path}"
    raise ValueError(
        f"unknown data {spec!r}: give a toy set ({', '.join(TOY_DATASETS)}) or a point file ({', '.join(POINT_FILES)})"
    )
