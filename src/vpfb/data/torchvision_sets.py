"""Image sets read through torchvision (CIFAR-10/100, SVHN, MNIST, Fashion-MNIST, CelebA) as uint8 [N, C, H, W].

torchvision is imported inside the functions, so `import vpfb.data` works without it. Its CIFAR loader unpickles
the official python batches after checking their md5 sums: pickle is the official format of those files. Nothing
vpfb writes itself (the CelebA cache below included) is ever a pickle.

CelebA follows the paper's authors: a centre crop of 140 × 140 pixels of the aligned 178 × 218 faces (torchvision's
CenterCrop offsets) resized to image_size × image_size (torchvision's Resize on PIL: bilinear, antialiased).
Decoding 160k JPEGs takes minutes, so the result is kept in root/vpfb-cache/celeba-{split}-{size}.npy and reused.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# name -> (splits, classes, what must exist under root before torchvision is asked; {split} is filled in)
TORCHVISION_SETS: dict[str, tuple[tuple[str, ...], int | None, str]] = {
    "cifar10": (("train", "test"), 10, "cifar-10-batches-py"),
    "cifar100": (("train", "test"), 100, "cifar-100-python"),
    "svhn": (("train", "test", "extra"), 10, "{split}_32x32.mat"),
    "mnist": (("train", "test"), 10, "MNIST/raw"),
    "fashion-mnist": (("train", "test"), 10, "FashionMNIST/raw"),
    "celeba": (("train", "valid", "test"), None, "celeba/img_align_celeba"),
}
CELEBA_CROP, CELEBA_SIZE = 140, 64
CACHE_FOLDER = "vpfb-cache"


def _torchvision_datasets(name: str):
    try:
        import torchvision.datasets
    except (ImportError, OSError, RuntimeError) as err:  # a torchvision built for another torch fails on load
        raise ImportError(
            f"the image set {name!r} is read through torchvision, which could not be imported "
            f"({err}); install it with: pip install 'vpfb[vision]'"
        ) from err
    return torchvision.datasets


def _open_set(name: str, root: Path, split: str, download: bool):
    """The torchvision dataset object, after checking that its files are there unless we may download them."""
    datasets = _torchvision_datasets(name)
    expected = root / TORCHVISION_SETS[name][2].format(split=split)
    if not download and not expected.exists():
        raise FileNotFoundError(
            f"image set {name!r} not found: looked for {expected}; pass download=True "
            f"(or put the official files there) to fetch it into {root}"
        )
    train = split == "train"
    makers = {
        "cifar10": lambda: datasets.CIFAR10(root, train=train, download=download),
        "cifar100": lambda: datasets.CIFAR100(root, train=train, download=download),
        "svhn": lambda: datasets.SVHN(root, split=split, download=download),
        "mnist": lambda: datasets.MNIST(root, train=train, download=download),
        "fashion-mnist": lambda: datasets.FashionMNIST(root, train=train, download=download),
        "celeba": lambda: datasets.CelebA(root, split=split, target_type=[], download=download),
    }
    try:
        return makers[name]()
    except RuntimeError as err:  # torchvision's word for missing, incomplete or md5-mismatched files
        raise ValueError(
            f"image set {name!r} under {root} is incomplete or corrupted ({err}); remove it and "
            f"pass download=True to fetch it again"
        ) from err


def _channels_first(data) -> Tensor:
    """torchvision's `data` ([N, H, W] tensor, [N, H, W, 3] or [N, 3, H, W] array) as uint8 [N, C, H, W]."""
    images = torch.as_tensor(np.asarray(data))
    if images.ndim == 3:
        return images.unsqueeze(1).contiguous()
    return images if images.shape[1] == 3 else images.permute(0, 3, 1, 2).contiguous()


def load_torchvision_set(
    name: str, root: Path, split: str, download: bool, image_size: int | None
) -> tuple[Tensor, Tensor | None, int | None]:
    """uint8 images [N, C, H, W], long labels [N] (None for CelebA) and the number of classes of one split.

    Only CelebA uses image_size (default 64) here; the other sets come at their own size (32 or 28)."""
    if name == "celeba":
        return load_celeba(root, split, download, image_size or CELEBA_SIZE), None, None
    dataset = _open_set(name, root, split, download)
    labels = dataset.labels if name == "svhn" else dataset.targets  # torchvision already maps SVHN's 10 to 0
    return (
        _channels_first(dataset.data),
        torch.as_tensor(np.asarray(labels), dtype=torch.long),
        TORCHVISION_SETS[name][1],
    )


def crop_and_resize(image, size: int):
    """The centre CELEBA_CROP square of a PIL image (torchvision CenterCrop's offsets), resized to size × size."""
    from PIL import Image

    width, height = image.size
    top, left = round((height - CELEBA_CROP) / 2), round((width - CELEBA_CROP) / 2)
    square = image.convert("RGB").crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
    return square.resize((size, size), Image.BILINEAR)


def load_celeba(root: Path, split: str, download: bool, size: int) -> Tensor:
    """CelebA faces of one split as uint8 [N, 3, size, size], read from the cache when it is there."""
    cache = root / CACHE_FOLDER / f"celeba-{split}-{size}.npy"
    if cache.exists():
        images = np.load(cache, allow_pickle=False)
        if images.dtype != np.uint8 or images.shape[1:] != (3, size, size):
            raise ValueError(
                f"the cache {cache} holds {images.dtype} {images.shape}, not uint8 [N, 3, {size}, "
                f"{size}]; delete it to decode the images again"
            )
        return torch.from_numpy(images)
    from PIL import Image
    from tqdm.auto import tqdm

    dataset = _open_set("celeba", root, split, download)
    folder = root / TORCHVISION_SETS["celeba"][2]

    def decode(filename: str) -> np.ndarray:
        with Image.open(folder / filename) as image:
            return np.asarray(crop_and_resize(image, size)).transpose(2, 0, 1)

    # PIL releases the GIL while decoding, so threads share the work without copying images between processes
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(
            tqdm(
                pool.map(decode, dataset.filename),
                total=len(dataset.filename),
                desc=f"decoding CelebA {split}",
                disable=None,
            )
        )
    images = np.stack(decoded)
    _save_atomically(cache, images)
    return torch.from_numpy(images)


def _save_atomically(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file and os.replace, so a reader never sees half a cache."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            np.save(file, array, allow_pickle=False)
        os.replace(temporary, path)
    except OSError as err:  # a read-only data folder costs a re-decode next time, not the run
        temporary.unlink(missing_ok=True)
        warnings.warn(
            f"could not write the cache {path} ({err}); the images will be decoded again next time", stacklevel=4
        )  # points at the caller of load_images
