"""The training loop: Adam with warm-up and cosine decay, gradient clipping, an EMA of the weights, a guard against
non-finite steps, metrics to CSV (and TensorBoard), and checkpoints from which a run resumes exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Union

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from vpfb import distributed
from vpfb.config import TrainConfig
from vpfb.distributed import World
from vpfb.losses import LossOutput
from vpfb.potentials import CompiledVelocity
from vpfb.training import checkpoint
from vpfb.training.metrics import MetricsLog, metrics_log


class BatchSource(Protocol):
    """Training data drawn by index, e.g. an image store that scales and flips the rows it is asked for. The trainer
    calls batch(index, generator=generator); any randomness (flips) must come from that CPU generator, the
    trainer's seeded one, for resumes to stay exact."""

    def __len__(self) -> int: ...

    def batch(self, index: Tensor, generator: torch.Generator) -> Tensor | tuple[Tensor, ...]: ...


Data = Union[Tensor, BatchSource]


@dataclass
class TrainResult:
    ema: nn.Module  # the exponential moving average of the potential: use it for sampling and densities
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # the rows logged by this call
    resumed_from: int = 0  # the checkpoint step this call continued from; 0 for a fresh run


SMALL_STEP = 5e7  # parameters × batch below which a CPU step gains nothing from a second thread


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's CPU threads set to `threads` for the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_threads(cfg: TrainConfig, model: nn.Module, device: torch.device) -> contextlib.AbstractContextManager:
    """torch_threads for training: cfg.threads if set; else one for a small step (parameters × batch below
    SMALL_STEP, e.g. every point MLP), which a second thread cannot speed up and which torch's default of one thread
    per core slows several-fold as soon as another process is busy; else unchanged (and unchanged off the CPU)."""
    work = sum(p.numel() for p in model.parameters()) * cfg.batch_size
    threads = cfg.threads or (1 if work < SMALL_STEP else None)
    return torch_threads(threads if device.type == "cpu" else None)


def learning_rate(cfg: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    """lr at `step` (from 1): linear warm-up to cfg.lr over cfg.warmup_steps, then cosine decay to cfg.lr_final over
    the remaining steps, or over the time budget if that runs out first."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.time_budget > 0:
        progress = max(progress, elapsed / cfg.time_budget)
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * min(progress, 1.0)))


def ema_decay(cfg: TrainConfig, updates: int) -> float:
    """The EMA's decay β after `updates` averaged steps: cfg.ema, or with cfg.ema_warmup the ramp of timm and
    diffusers, min(cfg.ema, (1 + n)/(10 + n)), whose horizon 1/(1 − β) = (10 + n)/9 stays below the n steps taken
    (n ≥ 2), so that a run shorter than the configured horizon does not save weights still near their start."""
    return min(cfg.ema, (1 + updates) / (10 + updates)) if cfg.ema_warmup else cfg.ema


def exponential_average(cfg: TrainConfig) -> Callable:
    """AveragedModel's multi_avg_fn: ē ← β ē + (1 − β) θ with β = ema_decay(cfg, n), n its count of updates (a
    buffer of the AveragedModel, so the ramp is checkpointed and resumes exactly)."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
        torch._foreach_lerp_(averaged, current, 1 - ema_decay(cfg, int(updates)))

    return update


def clip_to_second_moment_(optimiser: torch.optim.Adam, scale: float = 3.0, floor: float = 0.1) -> None:
    """The released per-entry rule: clip each gradient entry to ±(scale·√v̂ + floor), v̂ = v/(1 − β₂ᵏ) being Adam's
    bias-corrected second moment before this update. Entries without a v̂ yet (the first step) pass unclipped: with
    the v̂ = g² of their own update the rule would be a no-op."""
    for group in optimiser.param_groups:
        beta2 = group["betas"][1]
        for p in group["params"]:
            state = optimiser.state.get(p)
            if p.grad is None or not state:
                continue
            bound = scale * (state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))).sqrt() + floor
            p.grad.clamp_(-bound, bound)


def clip_gradients(potential: nn.Module, optimiser: torch.optim.Adam, cfg: TrainConfig) -> Tensor:
    """Clip in place as cfg.clip_mode says; return the global gradient norm before clipping."""
    if cfg.clip_mode == "norm" and cfg.grad_clip > 0:
        return torch.nn.utils.clip_grad_norm_(potential.parameters(), cfg.grad_clip)
    grads = [p.grad for p in potential.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if cfg.clip_mode == "released":
        clip_to_second_moment_(optimiser)
    return norm


def draw_batch(data: Data, generator: torch.Generator, size: int, device: torch.device, part: slice = slice(None)):
    """The rows `part` (this rank's share) of a random batch of `size`: rows of a tensor (on its device), or of
    data.batch(index, generator=...) moved to `device`. Indices come from the CPU `generator`, so its state alone
    fixes the data position."""
    index = torch.randint(len(data), (size,), generator=generator)
    if isinstance(data, Tensor):
        return data[index[part].to(data.device)]
    # the whole batch, so that its flips, and the generator after them, are those of a single process
    batch = data.batch(index, generator=generator)
    return batch[part].to(device) if isinstance(batch, Tensor) else tuple(b[part].to(device) for b in batch)


def train(
    potential: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor], LossOutput],
    data: Data,
    cfg: TrainConfig,
    metrics_csv: Path | None = None,
    progress_bar: bool = True,
    *,
    run_dir: Path | None = None,
    callback: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Minimise loss_fn(potential, batch) over random batches of `data` for cfg.steps steps (or cfg.time_budget s).

    With a `run_dir`, checkpoints go to run_dir/checkpoints every cfg.checkpoint_every steps and metrics to
    run_dir/metrics.csv (unless `metrics_csv` says otherwise); a run_dir holding checkpoints is resumed from the
    newest intact one, exactly: same batches, same noise, same losses as an uninterrupted run.
    `callback(step, ema_module)` runs every cfg.sample_every steps on a forked RNG, so it never changes training.

    Under torchrun (after distributed.init()) every process calls train with the same arguments, the potential on
    its own device. cfg.batch_size stays the global batch: every rank draws the same batch from the shared seeded
    generator and takes its share; the loss's noise (t, ε) comes from torch's RNG seeded cfg.seed + rank; the
    gradients, loss and logged parts are averaged over the ranks in one all-reduce (distributed.py says why not
    DDP), so the weights and EMA stay identical on all ranks and equal one process's on the whole batch, up to
    rounding, for a loss that is a mean over the batch. Rank 0 alone logs, shows progress and writes checkpoints,
    which hold every rank's RNG state. The callback runs on every rank, so that it can share out sampling
    (World.sample_sharded); it should write files only where distributed.current().is_main.
    """
    check_train_config(cfg)
    world = distributed.current()
    if cfg.batch_size % world.size:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} is the global batch and must divide by the {world.size} processes"
        )
    if len(data) < 2:
        raise ValueError(f"need at least 2 training points, got {len(data)}")
    if not isinstance(data, Tensor) and not callable(getattr(data, "batch", None)):
        raise TypeError(f"data must be a tensor or have a batch(index, generator) method, got {type(data).__name__}")
    if cfg.batch_size > len(data) and world.is_main:
        warnings.warn(
            f"train.batch_size={cfg.batch_size} is larger than the {len(data)} training points: batches "
            f"repeat points (they are drawn with replacement)",
            stacklevel=2,
        )
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    device = next(potential.parameters()).device
    if cfg.compile and cfg.amp == "bf16" and device.type == "cpu":
        raise ValueError(
            "train.compile=true with train.amp=bf16 on the CPU: inductor generates a broken second "
            "backward there (UnboundLocalError inside the compiled code, torch 2.13); drop one of them"
        )
    with cpu_threads(cfg, potential, device):
        return _train(potential, loss_fn, data, cfg, metrics_csv, progress_bar, run_dir, callback, device, world)


def _train(
    potential,
    loss_fn,
    data,
    cfg: TrainConfig,
    metrics_csv,
    progress_bar: bool,
    run_dir: Path | None,
    callback,
    device: torch.device,
    world: World,
) -> TrainResult:
    world.broadcast_(potential)
    torch.manual_seed(cfg.seed + world.rank)  # each rank its own noise; rank 0 draws a single process's
    batches = torch.Generator().manual_seed(cfg.seed)  # the same on every rank: the same global batches
    optimiser = torch.optim.Adam(potential.parameters(), lr=cfg.lr)
    ema = AveragedModel(potential, multi_avg_fn=exponential_average(cfg)).eval()
    forward = CompiledVelocity(potential) if cfg.compile else potential
    config = dataclasses.asdict(cfg)

    # resume from the newest intact checkpoint, or remember the initial state as the last good one
    good = checkpoint.load_latest(run_dir) if run_dir is not None else None
    if good is not None:
        checkpoint.restore_weights(good, potential, ema, optimiser)
        checkpoint.restore_rng(good, batches)
        world.restore_rng_states(good.tensors, device, good.source)
        if world.is_main:
            tqdm.write(f"resuming from {good.source} (step {good.step} of {cfg.steps})", file=sys.stderr)
    else:
        good = checkpoint.capture(0, 0.0, potential, ema, optimiser, batches, config)
    world.check_agree(good.step, "the step to resume from (every rank must read the same run_dir)")
    resumed_from = step = good.step
    start = time.perf_counter() - good.seconds  # the clock (time budget, schedule) continues too
    log = metrics_log(cfg, run_dir, metrics_csv, step) if world.is_main else MetricsLog(None, None, step)
    history: list[dict] = []
    failures, first_failure = 0, ""

    bar = tqdm(
        total=cfg.steps, initial=step, disable=not (progress_bar and world.is_main), desc="train", dynamic_ncols=True
    )
    with log, bar:
        while step < cfg.steps:
            elapsed = time.perf_counter() - start
            if cfg.time_budget > 0:  # rank 0's clock, so that all ranks use the same lr and stop together
                elapsed = world.broadcast_value(elapsed)
            if cfg.time_budget > 0 and elapsed >= cfg.time_budget:
                break
            step += 1
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(cfg, step, elapsed)
            batch = draw_batch(data, batches, cfg.batch_size, device, world.shard(cfg.batch_size))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
                out = loss_fn(forward, batch)
            optimiser.zero_grad(set_to_none=True)
            out.loss.backward()
            loss, *parts = world.average_gradients(potential, out.loss, *out.parts.values())
            out = LossOutput(loss, dict(zip(out.parts, parts)))
            grad_norm = clip_gradients(potential, optimiser, cfg)

            # divergence guard: go back to the last good state and skip this batch, at most max_restores times
            # before the next restore point (a run failing every other step makes no progress and must end).
            # The loss and gradients are means over the ranks, non-finite on all ranks if on one: all decide alike.
            if not bool(torch.isfinite(out.loss) & torch.isfinite(grad_norm)):
                failures += 1
                first_failure = first_failure or describe_failure(step, out, grad_norm)
                checkpoint.restore_weights(good, potential, ema, optimiser)
                if failures > cfg.max_restores:
                    kept = f"; {run_dir} keeps the checkpoint of step {good.step}" if run_dir and good.step else ""
                    raise FloatingPointError(
                        f"{first_failure}; non-finite again after {cfg.max_restores} restore(s) of the state of step "
                        f"{good.step}{kept}. Lower train.lr, raise train.warmup_steps or loss.t_min, or clip "
                        f"gradients (train.grad_clip, train.clip_mode)"
                    )
                if world.is_main:
                    warnings.warn(
                        f"non-finite loss or gradient at step {step}: restored the state of step "
                        f"{good.step} and skipped this batch ({failures}/{cfg.max_restores})",
                        stacklevel=2,
                    )
                bar.update(1)
                continue

            optimiser.step()
            ema.update_parameters(potential)
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {
                    "step": step,
                    "seconds": round(time.perf_counter() - start, 3),
                    "lr": optimiser.param_groups[0]["lr"],
                    "loss": out.loss.item(),
                    **{k: v.item() for k, v in out.parts.items()},
                    "grad_norm": grad_norm.item(),
                }
                history.append(row)
                log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            if step % cfg.checkpoint_every == 0:
                good = checkpoint.capture(step, time.perf_counter() - start, potential, ema, optimiser, batches, config)
                failures, first_failure = 0, ""
                if run_dir is not None:
                    save_checkpoint(good, world, device, run_dir, cfg.keep_checkpoints)
            if callback is not None and cfg.sample_every > 0 and step % cfg.sample_every == 0:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    callback(step, ema.module)
            bar.update(1)

    if run_dir is not None and step > good.step:  # the final state, so that a finished run resumes as finished
        save_checkpoint(
            checkpoint.capture(step, time.perf_counter() - start, potential, ema, optimiser, batches, config),
            world,
            device,
            run_dir,
            cfg.keep_checkpoints,
        )
    return TrainResult(ema.module, step, time.perf_counter() - start, history, resumed_from)


def save_checkpoint(
    snapshot: checkpoint.Snapshot, world: World, device: torch.device, run_dir: Path, keep: int
) -> None:
    """Rank 0 writes the snapshot with every rank's RNG state added; all ranks must call it (they gather)."""
    rng = world.gather_rng_states(device)
    if world.is_main:
        checkpoint.save(dataclasses.replace(snapshot, tensors={**snapshot.tensors, **rng}), run_dir, keep)


def describe_failure(step: int, out: LossOutput, grad_norm: Tensor) -> str:
    loss = out.loss.item()
    if math.isfinite(loss):
        what = f"gradient norm became {grad_norm.item()} (loss {loss})"
    else:
        what = f"loss became {loss}"
    return f"{what} at step {step} (parts: { {k: v.item() for k, v in out.parts.items()} })"


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first train.* setting the trainer cannot use."""
    choices = {"clip_mode": ("norm", "released"), "amp": ("none", "bf16")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"train.{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    for name in ("lr", "lr_final", "ema", "grad_clip", "time_budget"):
        if not math.isfinite(getattr(cfg, name)):
            raise ValueError(f"train.{name} must be a finite number, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.lr_final < 0:
        raise ValueError(f"train.lr must be positive and train.lr_final at least 0, got {cfg.lr} and {cfg.lr_final}")
    if not 0 <= cfg.ema < 1:
        raise ValueError(f"train.ema is a decay in [0, 1), got {cfg.ema}")
    for name in ("grad_clip", "time_budget"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"train.{name} must be at least 0 (0 turns it off), got {getattr(cfg, name)}")
    for name, least in (
        ("steps", 1),
        ("batch_size", 1),
        ("threads", 0),
        ("log_every", 1),
        ("checkpoint_every", 1),
        ("keep_checkpoints", 1),
        ("warmup_steps", 0),
        ("max_restores", 0),
        ("sample_every", 0),
    ):
        if getattr(cfg, name) < least:
            raise ValueError(f"train.{name} must be at least {least}, got {getattr(cfg, name)}")
