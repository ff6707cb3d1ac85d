"""Small fake image sets written in the official on-disk formats that torchvision reads, with known pixels.

Each writer returns what it wrote per split: uint8 images [N, C, H, W] and the labels a loader should report.
The CIFAR writers use pickle because the official CIFAR python batches are pickles; nothing else here does.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

Written = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images [N, C, H, W], labels [N])


def _pixels(rng: np.random.Generator, n: int, channels: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


def write_cifar(root: Path, classes: int = 10, sizes: dict[str, int] | None = None, seed: int = 0) -> Written:
    """cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta) or, for 100 classes, cifar-100-python
    (train, test, meta): dicts whose `data` rows are the R, G, B planes of a 32 × 32 image, row by row."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 10, "test": 4}
    written = {split: (_pixels(rng, n, 3, 32), rng.integers(0, classes, n)) for split, n in sizes.items()}
    if classes == 10:
        folder, label_key = root / "cifar-10-batches-py", "labels"
        train_images, train_labels = written["train"]
        parts = np.array_split(np.arange(len(train_images)), 5)
        files = {f"data_batch_{i + 1}": (train_images[part], train_labels[part]) for i, part in enumerate(parts)}
        files["test_batch"] = written["test"]
        meta = ("batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files = dict(written)
        meta = (
            "meta",
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            },
        )
    folder.mkdir(parents=True)
    for filename, (images, labels) in files.items():
        entry = {
            "batch_label": filename,
            "data": images.reshape(len(images), -1),
            label_key: labels.tolist(),
            "filenames": [f"{filename}_{i}.png" for i in range(len(images))],
        }
        if classes == 100:
            entry["coarse_labels"] = (labels // 5).tolist()
        (folder / filename).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / meta[0]).write_bytes(pickle.dumps(meta[1], protocol=2))
    return written


def write_svhn(root: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Written:
    """{split}_32x32.mat: X uint8 [32, 32, 3, N] and y [N, 1] in 1..10, 10 standing for the digit 0. The labels
    returned are the digits (0..9) a loader should report."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (sizes or {"train": 12, "test": 5}).items():
        images, digits = _pixels(rng, n, 3, 32), rng.integers(0, 10, n)
        digits[:2] = 0  # the 10 → 0 mapping is always exercised
        raw = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        root.mkdir(parents=True, exist_ok=True)
        savemat(root / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": raw})
        written[split] = (images, digits)
    return written


def write_mnist(root: Path, folder: str = "MNIST", sizes: dict[str, int] | None = None, seed: int = 0) -> Written:
    """{folder}/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte: big-endian idx headers, then the bytes."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    written = {}
    for split, n in (sizes or {"train": 10, "test": 4}).items():
        images, labels = _pixels(rng, n, 1, 28), rng.integers(0, 10, n)
        prefix = "train" if split == "train" else "t10k"
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes()
        )
        written[split] = (images, labels)
    return written


CELEBA_HEIGHT, CELEBA_WIDTH = 218, 178
CELEBA_TOP, CELEBA_LEFT = 39, 19  # torchvision CenterCrop(140) of 218 × 178: round(78/2), round(38/2)
CELEBA_ATTRIBUTES = [f"attribute{i}" for i in range(40)]
LANDMARKS = [
    "lefteye_x",
    "lefteye_y",
    "righteye_x",
    "righteye_y",
    "nose_x",
    "nose_y",
    "leftmouth_x",
    "leftmouth_y",
    "rightmouth_x",
    "rightmouth_y",
]


def write_celeba(root: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """celeba/img_align_celeba/NNNNNN.jpg (218 × 178) and the five annotation files torchvision parses. Each face
    is black outside its centre 140 × 140 crop and one colour (every channel ≥ 100) inside; returns the colours
    [N, 3] per split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    sizes = sizes or {"train": 6, "valid": 3, "test": 3}
    names, partition, colours = [], [], {}
    for code, (split, n) in enumerate(sizes.items()):
        colours[split] = rng.integers(100, 256, size=(n, 3), dtype=np.uint8)
        for colour in colours[split]:
            picture = np.zeros((CELEBA_HEIGHT, CELEBA_WIDTH, 3), np.uint8)
            picture[CELEBA_TOP : CELEBA_TOP + 140, CELEBA_LEFT : CELEBA_LEFT + 140] = colour
            names.append(f"{len(names) + 1:06d}.jpg")
            partition.append(code)
            Image.fromarray(picture).save(base / "img_align_celeba" / names[-1], quality=100, subsampling=0)

    def rows(values) -> str:
        return "".join(f"{name} {' '.join(map(str, v))}\n" for name, v in zip(names, values))

    count = f"{len(names)}\n"
    (base / "list_eval_partition.txt").write_text(rows([[p] for p in partition]))
    (base / "identity_CelebA.txt").write_text(rows([[i % 3 + 1] for i in range(len(names))]))
    (base / "list_bbox_celeba.txt").write_text(
        count + "image_id x_1 y_1 width height\n" + rows([[10, 20, 100, 120]] * len(names))
    )
    (base / "list_landmarks_align_celeba.txt").write_text(
        count + " ".join(LANDMARKS) + "\n" + rows([list(range(60, 70))] * len(names))
    )
    attributes = rng.choice([-1, 1], size=(len(names), 40))
    (base / "list_attr_celeba.txt").write_text(count + " ".join(CELEBA_ATTRIBUTES) + "\n" + rows(attributes))
    return colours
