"""Train the digit classifier whose penultimate features are the Fréchet feature space on MNIST (`MnistFeatures`).

    python benchmarks/mnist_classifier.py          # ≈ 30 s on one core; writes artifacts/mnist_classifier.safetensors

Trained on the 4,000 digits of vpfb's mnist5k training split and measured on its 1,000 held-out test digits (the
last 100 of each class); Adam with a cosine learning rate, no augmentation, one thread. Prints the held-out
accuracy, which is also stored in the file's metadata. The weights (106k parameters, 0.4 MB) are small enough to
commit, so benchmarks load them.
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
SEED = 0


@torch.no_grad()
def accuracy(model: MnistFeatures, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    hits = sum(
        (model.logits(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    )
    return hits / len(y)


def train_classifier(
    x: Tensor, y: Tensor, epochs: int = 12, batch_size: int = 64, lr: float = 2e-3, seed: int = SEED
) -> MnistFeatures:
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


def digits(split: str) -> tuple[Tensor, Tensor]:
    """The digits of an mnist5k split as floats in [-1, 1] [N, 1, 28, 28] and their labels [N]."""
    data = load_images("mnist5k", split=split)
    return data.batch(torch.arange(len(data))), data.labels


def train_and_save(path: Path = ARTIFACT, epochs: int = 12) -> tuple[MnistFeatures, float]:
    """Train on the training split, save to `path` and return the classifier and its test-split accuracy."""
    model = train_classifier(*digits("train"), epochs=epochs)
    acc = accuracy(model, *digits("test"))
    model.save(
        path,
        {
            "trained_on": "mnist5k train split",
            "seed": str(SEED),
            "epochs": str(epochs),
            "held_out_accuracy": f"{acc:.4f}",
        },
    )
    return model, acc


def load_or_train(path: Path = ARTIFACT) -> tuple[MnistFeatures, float]:
    """The classifier at `path` (trained and saved there first if missing) and its test-split accuracy."""
    if not path.is_file():
        return train_and_save(path)
    model = MnistFeatures.load(path)
    return model, accuracy(model, *digits("test"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=ARTIFACT)
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, acc = train_and_save(args.out, args.epochs)
    params = sum(q.numel() for q in model.parameters())
    print(
        f"MnistFeatures ({params / 1e3:.0f}k parameters, {model.num_features} features): accuracy {acc:.4f} on "
        f"the 1,000 digits of mnist5k's test split (trained on its 4,000 training digits); saved to {args.out}"
    )


if __name__ == "__main__":
    main()
