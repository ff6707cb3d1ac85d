"""Train a model from a config: data → standardise → potential + loss → trainer → EnergyModel in a run directory."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
import yaml
from torch import Tensor

from vpfb.config import Config, ConfigError
from vpfb.data import ImageData, Standardizer, load_data, load_images
from vpfb.evaluation.density import calibrate_density_t
from vpfb.files import digest
from vpfb.losses import TimeSampler, build_loss
from vpfb.model import IMAGE_ARCHITECTURES, EnergyModel, build_potential
from vpfb.parameterisation import with_labels
from vpfb.paths import GaussianPath
from vpfb.plots import save_image_grid
from vpfb import distributed
from vpfb.training import train
from vpfb.training.rundir import claim
from vpfb.training.trainer import check_train_config, ema_decay

PARTITION_MAX_DIM = 5  # importance sampling of Z fails beyond this (docs/method.md §2)
AUTO_PARTITION_WEIGHT = 0.03


def partition_weight(cfg: Config, dim: int) -> float:
    """λ of the partition term for data of `dim` dimensions: loss.partition_weight, or for "auto" 0.03 where the
    term works and 0 elsewhere. A λ > 0 set where it cannot work is a ConfigError naming the reason."""
    unfit = [(cfg.model.architecture in IMAGE_ARCHITECTURES,
              "is for point data (importance sampling of the partition function fails in image dimensions)"),
             (dim > PARTITION_MAX_DIM, f"is for point data of at most {PARTITION_MAX_DIM} dimensions (importance "
                                       f"sampling of the partition function fails beyond), these have {dim}"),
             (cfg.model.parameterisation != "energy",
              "needs model.parameterisation=energy: the direct read-out ψ = (2Φ − f‖x‖²)/g² scales the term's "
              "gradient by 1/g² near t = 1, which ruins training"),
             (cfg.loss.time_sampling != "uniform",
              f"draws its times uniformly; with loss.time_sampling={cfg.loss.time_sampling!r} its two halves would "
              f"average over different time laws and the loss would fall without bound along ψ + c(t)"),
             (cfg.loss.name != "deep_ritz", f"adds a term to the Deep Ritz loss, not to loss.name={cfg.loss.name!r}")]
    reasons = [reason for failed, reason in unfit if failed]
    if cfg.loss.partition_weight == "auto":
        return 0.0 if reasons else AUTO_PARTITION_WEIGHT
    if cfg.loss.partition_weight < 0:
        raise ConfigError(f"loss.partition_weight must be ≥ 0 or 'auto', got {cfg.loss.partition_weight}")
    if cfg.loss.partition_weight > 0 and reasons:
        raise ConfigError(f"loss.partition_weight={cfg.loss.partition_weight:g}: the partition term {reasons[0]}; "
                          f"set loss.partition_weight=0 or auto")
    return cfg.loss.partition_weight


def build_loss_from_config(cfg: Config, path: GaussianPath, dim: int):
    """The loss a config describes, for data of `dim` dimensions per sample."""
    sampler = TimeSampler(cfg.loss.time_sampling, cfg.loss.t_min)
    weight = partition_weight(cfg, dim)
    if cfg.loss.name == "deep_ritz":
        return build_loss("deep_ritz", path, estimator=cfg.loss.estimator, weight=cfg.loss.weight,
                          time_sampler=sampler, control_variate=cfg.loss.control_variate,
                          snr_floor=cfg.loss.snr_floor, partition_weight=weight,
                          partition_scale=cfg.loss.partition_scale)
    return build_loss(cfg.loss.name, path, time_sampler=sampler)


def fit(cfg: Config, out: str | Path | None = None, points: Tensor | None = None, progress_bar: bool = True,
        existing: str = "check") -> EnergyModel:
    """Train on cfg.data (or the given points [N, d]) and, when `out` is given, save the run there. Running the same
    run again on the same `out` resumes it from its last checkpoint; a different one (configuration or data) is
    refused unless existing="resume" (continue it with the new settings) or "restart" (discard it): see
    vpfb.training.rundir.claim."""
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={cfg.train.device} but no CUDA GPU is available; add train.device=cpu")
    if cfg.model.architecture in IMAGE_ARCHITECTURES:
        return fit_images(cfg, out, progress_bar, existing)
    if points is None:
        points, _ = load_data(cfg.data.name, cfg.data.n, cfg.data.seed, cfg.data.key or None)
    points = torch.as_tensor(points, dtype=torch.float32)
    if points.dim() != 2 or not torch.isfinite(points).all():
        raise ValueError(f"training points must be a finite [N, d] array, got shape {tuple(points.shape)}")
    standardizer = Standardizer.fit(points)
    potential = seeded_potential(cfg, points.shape[1])
    loss = build_loss_from_config(cfg, potential.path, points.shape[1])
    check_train_config(cfg.train)
    with claim(out, cfg.to_dict(), digest({"points": points}), existing) as run:
        if run is not None:
            write_config(cfg, run)
        result = train(potential, loss, standardizer.transform(points).to(cfg.train.device), cfg.train,
                       progress_bar=progress_bar, run_dir=run)
        model = EnergyModel(result.ema, cfg, standardizer).to(cfg.train.device)
        if cfg.eval.calibrate:
            pick = torch.randperm(len(points), generator=torch.Generator().manual_seed(cfg.train.seed))
            model.read_out_t, _ = calibrate_density_t(model, points[pick[: cfg.eval.calibrate_points]],
                                                      cfg.eval.calibrate_times)
        if run is not None:
            model.save(run)
    return model


def seeded_potential(cfg: Config, shape, num_classes: int | None = None):
    """build_potential with initial weights drawn from cfg.train.seed (on a forked RNG), so that the same command
    gives the same model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_potential(cfg, shape, num_classes).to(cfg.train.device)


def write_config(cfg: Config, run: Path) -> None:
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


class ImageBatches:
    """The trainer's view of image data: batch(index, generator) -> images [B, C, H, W] (dequantised and flipped at
    random when asked) or (images, labels) for a conditional model."""

    def __init__(self, data: ImageData, flip: bool, labels: bool, dequantize: bool = False):
        self.data, self.flip, self.labels, self.dequantize = data, flip, labels, dequantize

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, index: Tensor, generator: torch.Generator):
        x = self.data.batch(index, flip=self.flip, generator=generator, dequantize=self.dequantize)
        return (x, self.data.labels[index]) if self.labels else x


def conditional_loss(loss, null_label: int, dropout: float):
    """loss(Φ(·, ·, c), x) with each label replaced by the null label with probability `dropout`, so that one
    network learns Φ(x, t | c) and the unconditional Φ(x, t | ∅)."""

    def loss_fn(potential, batch):
        x, labels = batch
        drop = torch.rand(labels.shape, device=labels.device) < dropout
        return loss(with_labels(potential, torch.where(drop, null_label, labels)), x)

    return loss_fn


def grid_title(cfg, step: int) -> str:
    """Which weights a sample grid shows: the EMA that is saved, with its decay at that step."""
    return f"step {step}: EMA weights (the saved model), decay {ema_decay(cfg, step - 1):.4g}"


def fit_images(cfg: Config, out: str | Path | None = None, progress_bar: bool = True,
               existing: str = "check") -> EnergyModel:
    """Train an image potential (U-Net or WideResNet) on cfg.data; sample grids go to out/samples/."""
    d, m = cfg.data, cfg.model
    world = distributed.current()  # under torchrun every rank trains; rank 0 downloads, writes and draws
    if d.download and world.is_main:
        load_images(d.name, root=d.root or None, image_size=d.image_size or None, download=True)
    world.barrier()
    data = load_images(d.name, root=d.root or None, image_size=d.image_size or None, labels=m.conditional)
    if m.conditional and data.labels is None:
        raise ConfigError(f"model.conditional needs class labels, and {data.name} has none")
    potential = seeded_potential(cfg, data.shape, data.num_classes)
    loss = build_loss_from_config(cfg, potential.path, math.prod(data.shape))
    if m.conditional:
        loss = conditional_loss(loss, data.num_classes, m.label_dropout)
    check_train_config(cfg.train)
    fingerprint = digest({"images": data.images, **({"labels": data.labels} if m.conditional else {})})
    with claim(out if world.is_main else None, cfg.to_dict(), fingerprint, existing):
        return _train_images(cfg, Path(out) if out is not None else None, data, potential, loss, progress_bar)


def _train_images(cfg: Config, run: Path | None, data: ImageData, potential, loss, progress_bar: bool) -> EnergyModel:
    world = distributed.current()
    if run is not None and world.is_main:
        write_config(cfg, run)

    def sample_grid(step: int, ema) -> None:
        if world.is_main:
            model = EnergyModel(ema, cfg, None, data.shape, data.num_classes)
            save_image_grid(model.sample(64, generator=torch.Generator().manual_seed(0)),
                            run / "samples" / f"step-{step:08d}.png", title=grid_title(cfg.train, step))

    batches = ImageBatches(data, cfg.data.flip, cfg.model.conditional, cfg.data.dequantize)
    result = train(potential, loss, batches, cfg.train,
                   progress_bar=progress_bar,
                   run_dir=run, callback=sample_grid if run is not None else None)
    model = EnergyModel(result.ema, cfg, None, data.shape, data.num_classes)
    if run is not None and world.is_main:
        model.save(run)
        last_grid = run / "samples" / f"step-{result.steps:08d}.png"  # the same EMA and seed: the same picture
        if last_grid.is_file():
            shutil.copyfile(last_grid, run / "samples.png")
        else:
            save_image_grid(model.sample(64, generator=torch.Generator().manual_seed(0)), run / "samples.png",
                            title=grid_title(cfg.train, result.steps))
    return model
