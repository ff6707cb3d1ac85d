"""Train a model from a config: data → standardise → potential + loss → trainer → EnergyModel in a run directory."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
import yaml
from torch import Tensor

from vpfb import distributed
from vpfb.config import Config, ConfigError
from vpfb.data import ImageData, Standardizer, load_data, load_images
from vpfb.evaluation.density import calibrate_density_t
from vpfb.factory import IMAGE_ARCHITECTURES, build_loss_from_config, build_potential
from vpfb.files import digest
from vpfb.model import EnergyModel
from vpfb.parameterisation import with_labels
from vpfb.plots import save_image_grid
from vpfb.training import train
from vpfb.training.rundir import claim
from vpfb.training.trainer import check_train_config, ema_decay


def fit(
    cfg: Config,
    out: str | Path | None = None,
    points: Tensor | None = None,
    progress_bar: bool = True,
    existing: str = "check",
) -> EnergyModel:
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
        result = train(
            potential,
            loss,
            standardizer.transform(points).to(cfg.train.device),
            cfg.train,
            progress_bar=progress_bar,
            run_dir=run,
        )
        model = EnergyModel(result.ema, cfg, standardizer).to(cfg.train.device)
        if cfg.eval.calibrate:
            pick = torch.randperm(len(points), generator=torch.Generator().manual_seed(cfg.train.seed))
            model.read_out_t, _ = calibrate_density_t(
                model, points[pick[: cfg.eval.calibrate_points]], cfg.eval.calibrate_times
            )
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


def fit_images(
    cfg: Config, out: str | Path | None = None, progress_bar: bool = True, existing: str = "check"
) -> EnergyModel:
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
            save_image_grid(
                model.sample(64, generator=torch.Generator().manual_seed(0)),
                run / "samples" / f"step-{step:08d}.png",
                title=grid_title(cfg.train, step),
            )

    batches = ImageBatches(data, cfg.data.flip, cfg.model.conditional, cfg.data.dequantize)
    result = train(
        potential,
        loss,
        batches,
        cfg.train,
        progress_bar=progress_bar,
        run_dir=run,
        callback=sample_grid if run is not None else None,
    )
    model = EnergyModel(result.ema, cfg, None, data.shape, data.num_classes)
    if run is not None and world.is_main:
        model.save(run)
        last_grid = run / "samples" / f"step-{result.steps:08d}.png"  # the same EMA and seed: the same picture
        if last_grid.is_file():
            shutil.copyfile(last_grid, run / "samples.png")
        else:
            save_image_grid(
                model.sample(64, generator=torch.Generator().manual_seed(0)),
                run / "samples.png",
                title=grid_title(cfg.train, result.steps),
            )
    # every rank returns once rank 0 has written the run: a rank that left the process group early, while rank 0
    # still saved and drew, was seen to abort in gloo's teardown (terminate called without an active exception)
    world.barrier()
    return model
