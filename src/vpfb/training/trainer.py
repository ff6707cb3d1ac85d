"""The training loop: Adam with cosine decay, gradient clipping, an EMA of the weights, metrics to CSV."""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from vpfb.config import TrainConfig
from vpfb.losses import LossOutput


@dataclass
class TrainResult:
    ema: nn.Module  # the exponential moving average of the potential: use it for sampling and densities
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def cosine_lr(cfg: TrainConfig, progress: float) -> float:
    """lr at a training fraction in [0, 1]: cosine from cfg.lr to cfg.lr_final."""
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(potential: nn.Module, loss_fn: Callable[[nn.Module, Tensor], LossOutput], data: Tensor,
          cfg: TrainConfig, metrics_csv: Path | None = None, progress_bar: bool = True) -> TrainResult:
    """Minimise loss_fn(potential, batch) over random batches of `data` for cfg.steps steps (or cfg.time_budget s)."""
    if data.shape[0] < 2:
        raise ValueError(f"need at least 2 training points, got {data.shape[0]}")
    torch.manual_seed(cfg.seed)
    batches = torch.Generator(device=data.device).manual_seed(cfg.seed)
    optimiser = torch.optim.Adam(potential.parameters(), lr=cfg.lr)
    ema = AveragedModel(potential, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
    history: list[dict] = []
    start, step = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, disable=not progress_bar, desc="train", dynamic_ncols=True)
    for step in range(1, cfg.steps + 1):
        elapsed = time.perf_counter() - start
        if cfg.time_budget > 0 and elapsed >= cfg.time_budget:
            step -= 1
            break
        frac = max(step / cfg.steps, elapsed / cfg.time_budget if cfg.time_budget > 0 else 0.0)
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(cfg, frac)
        index = torch.randint(data.shape[0], (cfg.batch_size,), generator=batches, device=data.device)
        out = loss_fn(potential, data[index])
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"loss became {out.loss.item()} at step {step}; lower train.lr or "
                                     f"raise loss.t_min (parts: { {k: v.item() for k, v in out.parts.items()} })")
        optimiser.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(potential.parameters(), cfg.grad_clip)
        optimiser.step()
        ema.update_parameters(potential)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "seconds": round(time.perf_counter() - start, 3),
                   "lr": optimiser.param_groups[0]["lr"], **{k: v.item() for k, v in out.parts.items()}}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        bar.update(1)
    bar.close()
    if metrics_csv is not None and history:
        with open(metrics_csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    return TrainResult(ema.module, step, time.perf_counter() - start, history)
