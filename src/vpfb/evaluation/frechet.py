"""The Fréchet distance between two sets of features, their sufficient statistics, and the digit classifier whose
features it uses on MNIST.

FD(a, b) = ‖m_a − m_b‖² + tr(C_a + C_b − 2(C_a C_b)^{1/2}): the squared 2-Wasserstein distance between the
Gaussians N(m, C) fitted to each set (sample mean, unbiased covariance). With Inception-v3 pool features it is the
FID (the protocol: `vpfb.evaluation.fid`); on MNIST the features are the penultimate layer of `MnistFeatures`, a
small CNN trained on the digits. A set enters only through `FeatureStats` (N, Σf, Σffᵀ), which add over batches and
processes, and the distance is torchmetrics' FID computed from those sums: one formula for every caller.

Protocol (benchmarks/mnist5k.py): features of the N generated images against those of all 5,000 real digits, every
image in [-1, 1]. The estimate is biased upwards (the mean term alone by tr(C)/N per set), so compare distances
measured with the same N, and against the floor FD(N real digits, all real digits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from vpfb.files import atomic_write

if TYPE_CHECKING:
    from vpfb.distributed import World


class _Identity(nn.Module):
    """Features in, the same features out: lets torchmetrics' FID take features that were computed elsewhere."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _check_features(feats: Tensor, name: str, min_rows: int = 2) -> Tensor:
    feats = torch.as_tensor(feats)
    if feats.dim() != 2:
        raise ValueError(f"{name} must be a [N, d] matrix of features, got shape {tuple(feats.shape)}")
    if len(feats) < min_rows:
        raise ValueError(
            f"{name} has {len(feats)} sample(s); a covariance needs at least 2 (and N ≫ d for a small bias)"
        )
    if not torch.isfinite(feats).all():
        raise ValueError(f"{name} has NaN or inf in {int((~torch.isfinite(feats)).any(1).sum())} rows")
    return feats.detach()


@dataclass
class FeatureStats:
    """Sufficient statistics of N features f_i ∈ ℝ^d in float64: `count` N, `total` Σf_i [d] and `outer` Σf_i f_iᵀ
    [d, d]; the mean is Σf/N and the covariance (Σffᵀ − N m mᵀ)/(N − 1). They add over batches and processes.
    `meta` (str → str) describes where the features came from and travels with the file."""

    count: int
    total: Tensor
    outer: Tensor
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.total.shape[0] if self.total.dim() == 1 else -1
        if self.total.dim() != 1 or tuple(self.outer.shape) != (d, d):
            raise ValueError(
                f"FeatureStats needs total [d] and outer [d, d], got {tuple(self.total.shape)} and "
                f"{tuple(self.outer.shape)}"
            )
        if self.total.dtype != torch.float64 or self.outer.dtype != torch.float64:
            raise ValueError(f"FeatureStats sums are float64, got {self.total.dtype} and {self.outer.dtype}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"FeatureStats count must be a non-negative integer, got {self.count!r}")

    @classmethod
    def zeros(
        cls, dim: int, device: torch.device | str | None = None, meta: dict[str, str] | None = None
    ) -> FeatureStats:
        """The statistics of no features of dimension `dim`, on `device`."""
        total = torch.zeros(dim, dtype=torch.float64, device=device)
        return cls(0, total, torch.zeros(dim, dim, dtype=torch.float64, device=device), dict(meta or {}))

    @classmethod
    def of(cls, features: Tensor, meta: dict[str, str] | None = None) -> FeatureStats:
        """The statistics of features [N, d], on their device."""
        features = _check_features(features, "features", min_rows=0)
        return cls.zeros(features.shape[1], features.device, meta).update(features)

    @property
    def dim(self) -> int:
        return self.total.shape[0]

    def update(self, features: Tensor) -> FeatureStats:
        """Add features [N, d] (in float64, on these sums' device) and return self."""
        features = _check_features(features, "features", min_rows=0)
        if features.shape[1] != self.dim:
            raise ValueError(
                f"features of dimension {features.shape[1]} cannot join statistics of dimension {self.dim}"
            )
        f = features.to(self.total.device, torch.float64)
        self.count += len(f)
        self.total += f.sum(0)
        self.outer += f.T @ f
        return self

    def __add__(self, other: FeatureStats) -> FeatureStats:
        """The statistics of both sets together (self's meta)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot add FeatureStats of dimensions {self.dim} and {other.dim}")
        device = self.total.device
        return FeatureStats(
            self.count + other.count,
            self.total + other.total.to(device),
            self.outer + other.outer.to(device),
            dict(self.meta),
        )

    def all_reduce(self, world: World) -> FeatureStats:
        """The sum of every rank's statistics, on every rank, in one all-reduce (self for a single process)."""
        if world.size == 1:
            return self
        d = self.dim
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.total.device)  # exact to 2⁵³
        flat = world.all_reduce_sum(torch.cat([count, self.total, self.outer.reshape(-1)]))
        count, total, outer = flat.split([1, d, d * d])
        return FeatureStats(int(count.item()), total, outer.reshape(d, d), dict(self.meta))

    def save(self, path: str | Path) -> Path:
        """Write the sums to a safetensors file, `meta` and the count as its metadata; atomic (a temporary file in
        the same folder, then renamed), so a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"total": self.total.cpu().contiguous(), "outer": self.outer.cpu().contiguous()}
        atomic_write(path, safetensors_bytes(tensors, {**self.meta, "count": str(self.count)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """The statistics saved at `path`, on the CPU; ValueError when the file is not one (truncated, other)."""
        path = Path(path)
        try:
            with safe_open(path, "pt") as file:
                meta = dict(file.metadata() or {})
                tensors = {name: file.get_tensor(name) for name in file.keys()}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is not a FeatureStats file: {err}") from err
        count = meta.pop("count", "")
        if set(tensors) != {"total", "outer"} or not count.isdigit():
            raise ValueError(
                f"{path} is not a FeatureStats file: it holds tensors {sorted(tensors)} and count "
                f"{count!r}, expected total, outer and a count"
            )
        return cls(int(count), tensors["total"], tensors["outer"], meta)


def frechet_distance_of_stats(a: FeatureStats, b: FeatureStats) -> float:
    """‖m_a − m_b‖² + tr(C_a + C_b − 2(C_a C_b)^{1/2}) of the Gaussians fitted to two sets given by their statistics:
    torchmetrics' FID computed from its own states, set to these sums, in float64.

    Args:
        a, b: FeatureStats of one dimension d, each of at least 2 features (complete: already summed over
            processes; they are not synchronised again).
    Returns:
        The Fréchet distance, a float (ImportError without torchmetrics).
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:
        raise ImportError("the Fréchet distance uses torchmetrics: pip install 'vpfb[metrics]'") from err
    if a.dim != b.dim:
        raise ValueError(f"the feature statistics differ in dimension: {a.dim} and {b.dim}")
    if min(a.count, b.count) < 2:
        raise ValueError(
            f"the feature statistics count {a.count} and {b.count} samples; a covariance needs at "
            f"least 2 in each (and N ≫ d for a small bias)"
        )
    # the sums are complete (summed over processes already): torchmetrics must not sum them across ranks again
    metric = FrechetInceptionDistance(feature=_Identity(a.dim), sync_on_compute=False)
    nothing = torch.zeros(0, a.dim, dtype=torch.float64)
    for real, stats in ((True, a), (False, b)):
        metric.update(nothing, real=real)  # adds no features; records that states are set, and their float64 dtype
        prefix = "real" if real else "fake"
        setattr(metric, f"{prefix}_features_sum", stats.total.detach().cpu())
        setattr(metric, f"{prefix}_features_cov_sum", stats.outer.detach().cpu())
        setattr(metric, f"{prefix}_features_num_samples", torch.tensor(stats.count))
    return metric.compute().item()


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """‖m_a − m_b‖² + tr(C_a + C_b − 2(C_a C_b)^{1/2}) of two feature sets [N_a, d] and [N_b, d], in float64
    (`frechet_distance_of_stats` of their statistics).

    Args:
        feats_a, feats_b: [N_a, d] and [N_b, d] finite features, N ≥ 2 each (N ≫ d for a small bias); any device.
    Returns:
        The Fréchet distance, a float.
    """
    a, b = _check_features(feats_a, "feats_a"), _check_features(feats_b, "feats_b")
    return frechet_distance_of_stats(FeatureStats.of(a.cpu()), FeatureStats.of(b.cpu()))


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
            raise FileNotFoundError(
                f"no classifier weights at {path} (train them: python benchmarks/mnist_classifier.py)"
            )
        model = cls()
        try:
            model.load_state_dict(load_file(path))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ValueError(f"{path} does not hold MnistFeatures weights: {err}") from err
        return model.eval()


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """extractor(images) [N, d] computed batch by batch without gradients, in float64.

    Args:
        extractor: a module mapping images [B, C, H, W] to features [B, d] (e.g. MnistFeatures, in [-1, 1]).
        images: [N, C, H, W], on the extractor's device (they are not moved).
        batch_size: images per call, at least 1.
    Returns:
        [N, d] float64 features on the extractor's output device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return torch.cat([extractor(chunk).double() for chunk in images.split(batch_size)])
