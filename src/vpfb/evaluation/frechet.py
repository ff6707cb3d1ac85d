"""The Fréchet distance between two sets of features, and the digit classifier whose features it uses on MNIST.

FD(a, b) = ‖m_a − m_b‖² + tr(C_a + C_b − 2(C_a C_b)^{1/2}): the squared 2-Wasserstein distance between the
Gaussians N(m, C) fitted to each set (sample mean, unbiased covariance). With Inception-v3 pool features it is the
FID; on MNIST the features are the penultimate layer of `MnistFeatures`, a small CNN trained on the digits.

Protocol (benchmarks/mnist5k.py): features of the N generated images against those of all 5,000 real digits, every
image in [-1, 1]. The estimate is biased upwards (the mean term alone by tr(C)/N per set), so compare distances
measured with the same N, and against the floor FD(N real digits, all real digits).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


class _Identity(nn.Module):
    """Features in, the same features out: lets torchmetrics' FID take features that were computed elsewhere."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _check_features(feats: Tensor, name: str) -> Tensor:
    feats = torch.as_tensor(feats)
    if feats.dim() != 2:
        raise ValueError(f"{name} must be a [N, d] matrix of features, got shape {tuple(feats.shape)}")
    if len(feats) < 2:
        raise ValueError(f"{name} has {len(feats)} sample(s); a covariance needs at least 2 (and N ≫ d for a "
                         f"small bias)")
    if not torch.isfinite(feats).all():
        raise ValueError(f"{name} has NaN or inf in {int((~torch.isfinite(feats)).any(1).sum())} rows")
    return feats.detach().cpu().double()


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """‖m_a − m_b‖² + tr(C_a + C_b − 2(C_a C_b)^{1/2}) of two feature sets [N_a, d] and [N_b, d], in float64
    (torchmetrics' FID on the given features)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:
        raise ImportError("the Fréchet distance uses torchmetrics: pip install 'vpfb[metrics]'") from err
    a, b = _check_features(feats_a, "feats_a"), _check_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the feature sets differ in dimension: feats_a has {a.shape[1]}, feats_b {b.shape[1]}")
    metric = FrechetInceptionDistance(feature=_Identity(a.shape[1]))
    metric.update(a, real=True)
    metric.update(b, real=False)
    return metric.compute().item()


class MnistFeatures(nn.Module):
    """A small CNN digit classifier for 1×28×28 images in [-1, 1]; forward gives its penultimate features [N, 64]
    (ReLU of a linear map of the 7×7 convolutional maps), `logits` the 10 class scores."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.hidden = nn.Linear(32 * 7 * 7, self.num_features)
        self.classifier = nn.Linear(self.num_features, 10)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"MnistFeatures takes images [N, 1, 28, 28] in [-1, 1], got shape {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 14×14
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # 7×7
        return F.relu(self.hidden(h.flatten(1)))

    def logits(self, x: Tensor) -> Tensor:
        return self.classifier(self(x))

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, path, metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MnistFeatures:
        """The classifier saved at `path` (safetensors), in eval mode on the CPU."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no classifier weights at {path} (train them: python benchmarks/"
                                    f"mnist_classifier.py)")
        model = cls()
        try:
            model.load_state_dict(load_file(path))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ValueError(f"{path} does not hold MnistFeatures weights: {err}") from err
        return model.eval()


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """extractor(images) [N, d] computed batch by batch without gradients, in float64."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return torch.cat([extractor(chunk).double() for chunk in images.split(batch_size)])
