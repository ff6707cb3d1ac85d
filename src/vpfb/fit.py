"""Train a model from a config: data → standardise → potential + loss → trainer → EnergyModel in a run directory."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import Tensor

from vpfb.config import Config
from vpfb.data import Standardizer, load_data
from vpfb.evaluation.density import calibrate_density_t
from vpfb.losses import TimeSampler, build_loss
from vpfb.model import EnergyModel, build_potential
from vpfb.paths import GaussianPath
from vpfb.training import train


def build_loss_from_config(cfg: Config, path: GaussianPath):
    sampler = TimeSampler(cfg.loss.time_sampling, cfg.loss.t_min)
    if cfg.loss.name == "deep_ritz":
        return build_loss("deep_ritz", path, estimator=cfg.loss.estimator, weight=cfg.loss.weight,
                          time_sampler=sampler, control_variate=cfg.loss.control_variate,
                          snr_floor=cfg.loss.snr_floor)
    return build_loss(cfg.loss.name, path, time_sampler=sampler)


def fit(cfg: Config, out: str | Path | None = None, points: Tensor | None = None,
        progress_bar: bool = True) -> EnergyModel:
    """Train on cfg.data (or the given points [N, d]) and, when `out` is given, save the run there."""
    if points is None:
        points, _ = load_data(cfg.data.name, cfg.data.n, cfg.data.seed)
    points = torch.as_tensor(points, dtype=torch.float32)
    if points.dim() != 2 or not torch.isfinite(points).all():
        raise ValueError(f"training points must be a finite [N, d] array, got shape {tuple(points.shape)}")
    standardizer = Standardizer.fit(points)
    potential = build_potential(cfg, points.shape[1]).to(cfg.train.device)
    loss = build_loss_from_config(cfg, potential.path)
    run = Path(out) if out is not None else None
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run)
    result = train(potential, loss, standardizer.transform(points).to(cfg.train.device), cfg.train,
                   progress_bar=progress_bar, run_dir=run)
    model = EnergyModel(result.ema, cfg, standardizer).to(cfg.train.device)
    if cfg.eval.calibrate:
        pick = torch.randperm(len(points), generator=torch.Generator().manual_seed(cfg.train.seed))
        cfg.eval.density_t, _ = calibrate_density_t(model, points[pick[: cfg.eval.calibrate_points]],
                                                    cfg.eval.calibrate_times)
    if run is not None:
        write_config(cfg, run)  # again: calibration may have set eval.density_t
        model.save(run)
    return model


def write_config(cfg: Config, run: Path) -> None:
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
