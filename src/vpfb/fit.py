"""Train a model from a config: data → potential + loss → trainer → EnergyModel in a run directory, the same way for
points and images (vpfb.data.training_set makes the one choice between them)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
import yaml
from torch import Tensor

from vpfb import distributed
from vpfb.config import Config, ConfigError
from vpfb.data import load_data
from vpfb.data.training_set import TrainingSet, image_set, point_set
from vpfb.evaluation.density import calibrate_density_t
from vpfb.factory import IMAGE_ARCHITECTURES, build_loss_from_config, build_potential
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
    """Train a potential Φ on cfg.data (or the given points [N, d]) and return it as an EnergyModel; when `out` is
    given, save the run there (image models also draw sample grids to out/samples/).

    Running the same run again on the same `out` resumes it from its last checkpoint; a different one (configuration
    or data) is refused unless existing="resume" (continue it with the new settings) or "restart" (discard it): see
    vpfb.training.rundir.claim. Under torchrun every rank trains and rank 0 alone writes. For points with
    cfg.eval.calibrate, the read-out time is then picked among cfg.eval.calibrate_times by `calibrate_density_t` on
    up to cfg.eval.calibrate_points training points (drawn with cfg.train.seed).

    Args:
        cfg: the configuration (data, model, loss, train, eval); the initial weights are drawn from cfg.train.seed.
        out: run directory: config.yaml, checkpoints/, model.safetensors + model.json, for images samples/ and
            samples.png (the last grid). None: nothing is written.
        points: [N, d] training points in user units, in place of cfg.data (unused by image architectures).
        progress_bar: show the trainer's progress bar.
        existing: "check", "resume" or "restart": what to do with a different run already in `out`.
    Returns:
        EnergyModel with the EMA weights on cfg.train.device, read_out_t calibrated as above (else
        cfg.eval.density_t). Raises ConfigError for a CUDA device without a GPU, or a conditional model without
        labels.
    """
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={cfg.train.device} but no CUDA GPU is available; add train.device=cpu")
    if cfg.model.architecture in IMAGE_ARCHITECTURES:
        data = image_set(cfg)
    else:
        data = point_set(
            points
            if points is not None
            else load_data(cfg.data.name, cfg.data.n, cfg.data.seed, cfg.data.key or None)[0]
        )
    if cfg.model.conditional and data.num_classes is None:
        raise ConfigError("model.conditional needs class labels, and points have none")
    potential = seeded_potential(cfg, data.shape, data.num_classes)
    loss = build_loss_from_config(cfg, potential.path, math.prod(data.shape))
    if cfg.model.conditional:
        loss = conditional_loss(loss, data.num_classes, cfg.model.label_dropout)
    check_train_config(cfg.train)
    world = distributed.current()
    with claim(out if world.is_main else None, cfg.to_dict(), data.fingerprint, existing):
        return _train(cfg, Path(out) if out is not None else None, data, potential, loss, progress_bar)


def seeded_potential(cfg: Config, shape, num_classes: int | None = None):
    """build_potential with initial weights drawn from cfg.train.seed (on a forked RNG), so that the same command
    gives the same model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_potential(cfg, shape, num_classes).to(cfg.train.device)


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


def _train(cfg: Config, run: Path | None, data: TrainingSet, potential, loss, progress_bar: bool) -> EnergyModel:
    world = distributed.current()
    main = run is not None and world.is_main
    if main:
        (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def handle(ema) -> EnergyModel:
        return EnergyModel(ema, cfg, data.standardizer, data.shape, data.num_classes).to(cfg.train.device)

    def sample_grid(step: int, ema, path: Path | None = None) -> None:
        if world.is_main:
            save_image_grid(
                handle(ema).sample(64, generator=torch.Generator().manual_seed(0)),
                path or run / "samples" / f"step-{step:08d}.png",
                title=grid_title(cfg.train, step),
            )

    rows = data.rows.to(cfg.train.device) if isinstance(data.rows, Tensor) else data.rows
    callback = sample_grid if run is not None and data.images else None
    result = train(potential, loss, rows, cfg.train, progress_bar=progress_bar, run_dir=run, callback=callback)
    model = handle(result.ema)
    if cfg.eval.calibrate and data.points is not None:
        pick = torch.randperm(len(data.points), generator=torch.Generator().manual_seed(cfg.train.seed))
        model.read_out_t, _ = calibrate_density_t(
            model, data.points[pick[: cfg.eval.calibrate_points]], cfg.eval.calibrate_times
        )
    if main:
        model.save(run)
        if data.images:
            last_grid = run / "samples" / f"step-{result.steps:08d}.png"  # the same EMA and seed: the same picture
            if last_grid.is_file():
                shutil.copyfile(last_grid, run / "samples.png")
            else:
                sample_grid(result.steps, result.ema, run / "samples.png")
    # every rank returns once rank 0 has written the run: a rank that left the process group early, while rank 0
    # still saved and drew, was seen to abort in gloo's teardown (terminate called without an active exception)
    world.barrier()
    return model
