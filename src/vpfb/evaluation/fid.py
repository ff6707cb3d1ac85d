"""The FID of a trained image model, by one protocol.

- Samples: n = 50,000 by default, the field's standard (the paper's released code used 10,000; FID is biased
  upwards, more so for small n, so compare only numbers measured with the same n). They come from the run's saved
  weights, which are the EMA weights, by the model's ODE sampler (solver and steps as given), and are quantised to
  uint8 as a saved picture would be: round((clamp(x, −1, 1) + 1)·127.5).
- Reference: the full training split of the run's data set at the model's resolution (`data.image_size`), whose
  statistics are cached per (data set, split, image size, extractor) under $VPFB_CACHE/fid, else ~/.cache/vpfb/fid.
- Features: Inception-v3 pool features (d = 2048) computed by torchmetrics (which needs torch-fidelity and downloads
  the Inception weights once); grey images are repeated to 3 channels, torchmetrics resizes to 299×299 itself. Or
  "mnist" (MnistFeatures, d = 64) or any nn.Module mapping images [N, C, H, W] in [-1, 1] to features [N, d].
- Distance: FD of the Gaussians fitted to the two sets (`frechet.frechet_distance_of_stats`, torchmetrics'
  formula), from statistics N, Σf, Σffᵀ: under torchrun each rank draws n/size samples with its own generator
  (seed + rank) and the ranks' sums are added; no image leaves its rank. n must exceed d, else C is singular.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vpfb import distributed
from vpfb.data import load_images
from vpfb.data.images import IMAGE_SETS
from vpfb.distributed import World
from vpfb.evaluation.frechet import FeatureStats, MnistFeatures, frechet_distance_of_stats
from vpfb.files import digest
from vpfb.model import EnergyModel

__all__ = [
    "FeatureStats",
    "InceptionFeatures",
    "build_extractor",
    "default_cache_dir",
    "fid",
    "frechet_distance_of_stats",
    "quantise",
    "reference_stats",
    "sample_stats",
    "task_fid",
    "to_uint8",
]

STANDARD_SAMPLES = 50_000
EXTRACTORS = ("inception", "mnist")
METRICS_HINT = "pip install 'vpfb[metrics]' (or pip install torchmetrics torch-fidelity)"


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] as a saved picture holds them: round((clamp(x, −1, 1) + 1)·127.5) in uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def quantise(x: Tensor) -> Tensor:
    """x rounded to the 256 levels of a saved picture, back in [-1, 1] as `ImageData.batch` gives real images."""
    return to_uint8(x).float() / 127.5 - 1


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features [N, 2048] of images [N, C, H, W] in [-1, 1] (C = 1 repeated to 3), by torchmetrics'
    FID network, which takes uint8 and resizes to 299×299 itself. `network` replaces it (tests)."""

    num_features = 2048

    def __init__(self, network: nn.Module | None = None):
        super().__init__()
        self.network = network if network is not None else _torchmetrics_inception()

    def forward(self, x: Tensor) -> Tensor:
        images = to_uint8(x)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.network(images.contiguous())


def _torchmetrics_inception() -> nn.Module:
    try:
        from torchmetrics.utilities import imports
    except ImportError as err:
        raise ImportError(f"the 'inception' extractor uses torchmetrics: {METRICS_HINT}") from err
    if not imports._TORCH_FIDELITY_AVAILABLE:
        raise ImportError(
            f"the 'inception' extractor needs torch-fidelity, which holds torchmetrics' Inception-v3 "
            f"(its weights download on first use): {METRICS_HINT}"
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(InceptionFeatures.num_features)])


def build_extractor(extractor: str | nn.Module, extractor_path: str | Path | None = None) -> tuple[nn.Module, str]:
    """The feature extractor and the name its cached statistics go by: "inception", "mnist" (MnistFeatures weights
    at `extractor_path`) or an nn.Module. The name ends in a digest of the weights, so other weights never read
    another extractor's cache."""
    if isinstance(extractor, nn.Module):
        module, label = extractor, type(extractor).__name__
    elif extractor == "inception":
        module, label = InceptionFeatures(), "inception-v3-compat"
    elif extractor == "mnist":
        if extractor_path is None:
            raise ValueError(
                "the 'mnist' extractor needs extractor_path= (--extractor-path), the MnistFeatures "
                "weights (benchmarks/artifacts/mnist_classifier.safetensors in the vpfb repository; "
                "train them with python benchmarks/mnist_classifier.py)"
            )
        module, label = MnistFeatures.load(extractor_path), "mnist"
    else:
        raise ValueError(
            f"unknown extractor {extractor!r}; choose one of {EXTRACTORS} or give an nn.Module mapping "
            f"images [N, C, H, W] in [-1, 1] to features [N, d]"
        )
    return module, f"{label}-{digest(module.state_dict())[:12]}"


def default_cache_dir() -> Path:
    """$VPFB_CACHE/fid, else ~/.cache/vpfb/fid."""
    root = os.environ.get("VPFB_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "vpfb") / "fid"


def _dataset_key(dataset: str | Path) -> str:
    """A named set by its name; a folder or array file by its name and a digest of its absolute path."""
    if not isinstance(dataset, Path) and str(dataset).lower() in IMAGE_SETS:
        return str(dataset).lower()
    path = Path(dataset).expanduser().resolve()
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    tensor = tensor if tensor is not None else next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _shape_text(shape: Iterable[int]) -> str:
    return "x".join(map(str, shape))


def _chunks(count: int, batch_size: int) -> tuple[Tensor, ...]:
    """range(count) in consecutive batches of batch_size (the last one shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return torch.arange(count).split(batch_size)


def _stats_of(extractor: nn.Module, batches: Iterable[Tensor], meta: dict[str, str]) -> FeatureStats:
    """FeatureStats of extractor(x) over the batches x, on the extractor's device."""
    stats = None
    for x in batches:
        with torch.no_grad():
            features = extractor(x.to(_device_of(extractor)))
        stats = FeatureStats.of(features, meta) if stats is None else stats.update(features)
    if stats is None:
        raise ValueError("no images to extract features from")
    return stats


def reference_stats(
    dataset: str | Path,
    extractor: nn.Module,
    extractor_name: str,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 250,
    shape: tuple[int, ...] | None = None,
    progress: bool = False,
) -> FeatureStats:
    """FeatureStats of every image of a data set's split (`vpfb.data.load_images` at image_size), cached in
    cache_dir as <data set>-<split>-<size>-<extractor_name>.safetensors. A cache file that cannot be read, or
    describes something else, is recomputed with a warning. With `shape`, images of another shape are an error.
    `extractor_name` must change whenever the extractor's weights do (`build_extractor` names them so).

    Args:
        dataset, root, split, image_size: the images, as `load_images` takes them (image_size None: native size).
        extractor: module mapping images [B, C, H, W] in [-1, 1] (moved to its device) to features [B, d].
        cache_dir: default `default_cache_dir()`. batch_size: images per batch. shape: the model's (C, H, W).
    Returns:
        FeatureStats of all the split's images (meta: dataset, split, image_size, extractor, shape).
    """
    key = {
        "dataset": _dataset_key(dataset),
        "split": split,
        "image_size": str(image_size or "native"),
        "extractor": extractor_name,
    }
    stem = "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", v) for v in key.values())
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{stem}.safetensors"
    cached = _read_cache(path, key)
    if cached is not None:
        _check_shape(cached.meta.get("shape", "unknown"), shape, dataset)
        return cached
    data = load_images(dataset, root=root, split=split, image_size=image_size, labels=False)
    _check_shape(_shape_text(data.shape), shape, dataset)
    chunks = tqdm(
        _chunks(len(data), batch_size),
        desc=f"FID reference: {key['dataset']} {split}",
        disable=not progress,
        dynamic_ncols=True,
    )
    batches = (data.batch(index) for index in chunks)
    stats = _stats_of(extractor, batches, {**key, "shape": _shape_text(data.shape)})
    stats.save(path)
    return stats


def _read_cache(path: Path, key: dict[str, str]) -> FeatureStats | None:
    """The statistics cached at `path` if they describe `key`; None, with a warning, if the file is unreadable or
    describes something else; None if there is no file."""
    if not path.is_file():
        return None
    try:
        cached = FeatureStats.load(path)
    except ValueError as err:
        warnings.warn(f"the cached reference statistics {path} are unreadable ({err}); recomputing them", stacklevel=3)
        return None
    stale = {k: cached.meta.get(k) for k in key if cached.meta.get(k) != key[k]}
    if stale:
        warnings.warn(
            f"the cached reference statistics {path} describe {stale}, not {key}; recomputing them", stacklevel=3
        )
        return None
    return cached


def _check_shape(found: str, wanted: tuple[int, ...] | None, dataset: str | Path) -> None:
    if wanted is not None and found != _shape_text(wanted):
        raise ValueError(
            f"the reference set {dataset} has images of shape {found}, the model makes "
            f"{_shape_text(wanted)}; FID needs both at the same resolution (data.image_size)"
        )


def sample_stats(
    model: EnergyModel,
    extractor: nn.Module,
    n: int,
    world: World = World(),  # noqa: B008  (a frozen dataclass: one process)
    batch_size: int = 250,
    seed: int = 0,
    keep: int = 0,
    progress: bool = False,
    **sample_options,
) -> tuple[FeatureStats, Tensor]:
    """This rank's share of n quantised model samples, drawn batch by batch with a generator seeded seed + rank:
    the FeatureStats of their features and the first `keep` of them (CPU, in [-1, 1]).

    Args:
        n: samples over all ranks (`world.share_sizes`). batch_size: samples per `model.sample` call.
        sample_options: `EnergyModel.sample`'s (solver, steps, labels, tolerances).
    Returns:
        (FeatureStats of this rank alone (all_reduce them), [min(keep, share), *shape] kept samples).
    """
    share = world.share_sizes(n)[world.rank]
    generator = torch.Generator().manual_seed(seed + world.rank)
    kept: list[Tensor] = []

    def batches():
        with tqdm(
            total=share,
            desc=f"FID samples (rank {world.rank} of {world.size})",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            for index in _chunks(share, batch_size):
                x = quantise(model.sample(len(index), generator=generator, **sample_options))
                have = sum(map(len, kept))
                if have < keep:
                    kept.append(x[: keep - have].cpu())
                bar.update(len(x))
                yield x

    stats = _stats_of(extractor, batches(), {})
    return stats, torch.cat(kept) if kept else torch.zeros(0, *model.shape)


def fid(
    model: EnergyModel,
    n: int = STANDARD_SAMPLES,
    extractor: str | nn.Module = "inception",
    extractor_path: str | Path | None = None,
    batch_size: int = 250,
    solver: str | None = None,
    steps: int = 100,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    keep: int = 0,
    **sample_options,
) -> dict:
    """FD between n samples of `model` and its training set in the features of `extractor` (module docstring).
    Under torchrun every rank calls it; the samples are shared out, rank 0 computes the reference, and every rank
    returns {"fid", "samples", "reference", "extractor", "feature_dim"} (and "images", rank 0's first `keep`
    samples, when keep > 0). A module extractor is moved to the model's device and put in eval mode.

    Args:
        n: samples in all, more than d and at least one per process (default 50,000).
        extractor: "inception", "mnist" (weights at `extractor_path`) or an nn.Module (`build_extractor`).
        batch_size: images per sampling and feature batch. solver, steps: the ODE sampler's (`EnergyModel.flow`).
        seed: rank r samples with seed + r. cache_dir: reference statistics (default `default_cache_dir()`).
        progress: progress bars (rank 0). sample_options: further `EnergyModel.sample` arguments (labels, ...).
    Returns:
        dict: "fid" (float), "samples" n, "reference" {dataset, split, image_size, images}, "extractor" (its
        cache name), "feature_dim" d, "seed", and with keep > 0 "images" [≤ keep, C, H, W] (CPU; each rank its own).
    """
    if len(model.shape) != 3:
        raise ValueError(f"FID needs an image model; this one takes points of dimension {model.dim}")
    world = distributed.current()
    module, name = build_extractor(extractor, extractor_path)
    module = module.to(model.device).eval()
    with torch.no_grad():  # fail before sampling when the extractor cannot read the model's images
        dim = module(torch.zeros(1, *model.shape, device=model.device)).shape[-1]
    _check_enough(n, dim, "samples", f"the standard is {STANDARD_SAMPLES:,} samples")
    if n < world.size:
        raise ValueError(f"cannot share {n} samples among {world.size} processes")
    data, show = model.config.data, progress and world.is_main
    reference = None
    if world.is_main:
        reference = reference_stats(
            data.name,
            module,
            name,
            root=data.root or None,
            split="train",
            image_size=data.image_size or None,
            cache_dir=cache_dir,
            batch_size=batch_size,
            shape=model.shape,
            progress=show,
        )
        _check_enough(
            reference.count,
            dim,
            f"reference images ({data.name}, train)",
            "FID needs a larger training set or an extractor with fewer features",
        )
    local, images = sample_stats(
        model, module, n, world, batch_size, seed, keep, show, solver=solver, steps=steps, **sample_options
    )
    generated = local.all_reduce(world)
    value = frechet_distance_of_stats(reference, generated) if world.is_main else 0.0
    result = {
        "fid": world.broadcast_value(value),
        "samples": n,
        "reference": {
            "dataset": data.name,
            "split": "train",
            "image_size": data.image_size or None,
            "images": int(world.broadcast_value(reference.count if world.is_main else 0)),
        },
        "extractor": name,
        "feature_dim": dim,
        "seed": seed,
    }
    if keep > 0:
        result["images"] = images
    return result


def _check_enough(count: int, dim: int, what: str, hint: str) -> None:
    if count <= dim:
        raise ValueError(
            f"FID needs more {what} than feature dimensions: {count} ≤ d = {dim} leaves the covariance singular; {hint}"
        )


def task_fid(model: EnergyModel, out: Path, n: int, generator: torch.Generator, **options) -> dict:
    """`vpfb eval --task fid`: fid() with n samples (seeded from `generator`; options as fid's), and a grid of the
    first 64 samples in out/fid_samples.png."""
    from vpfb.plots import save_image_grid

    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    result = fid(model, n, seed=seed, keep=64, **options)
    images = result.pop("images")
    if distributed.current().is_main:
        save_image_grid(images, Path(out) / "fid_samples.png", columns=8)
    return result
