"""Training checkpoints: everything needed to continue a run exactly, in safetensors, never pickled.

A checkpoint is one file, run_dir/checkpoints/step-XXXXXXXX.safetensors: the tensors (model, EMA, Adam's moments
and step counts, RNG states as uint8) plus, in the file's metadata, a JSON record of the rest (step, clock,
optimiser hyper-parameters, config) and a SHA-256 of the tensors. Files are written to a temporary name, fsynced
and renamed, so a crash never leaves a half file under a checkpoint's name; a corrupt file is skipped for the one
before it, with a warning.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from vpfb.files import atomic_write, digest

FORMAT = 1
PATTERN = "step-*.safetensors"
META_KEYS = ("param_groups", "optimiser_scalars", "config")


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read back as written (truncated, garbage, checksum mismatch)."""


@dataclass
class Snapshot:
    step: int
    seconds: float  # training clock at `step` (a resumed run's time budget and schedule continue from it)
    tensors: dict[str, Tensor]  # CPU copies: "model.*", "ema.*", "optimiser.<i>.<name>", "rng.*"
    meta: dict  # JSON-able: optimiser param groups and non-tensor state, config
    source: str = "memory"  # where it came from, for messages


def capture(
    step: int,
    seconds: float,
    model: nn.Module,
    ema: nn.Module,
    optimiser: torch.optim.Optimizer,
    generator: torch.Generator,
    config: dict,
) -> Snapshot:
    """Copy the training state to CPU: weights, EMA, optimiser, and the torch, CUDA and batch RNG states."""
    tensors = {f"model.{k}": _copy(v) for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": _copy(v) for k, v in ema.state_dict().items()})
    opt = optimiser.state_dict()
    scalars: dict[str, dict] = {}
    for index, state in opt["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optimiser.{index}.{name}"] = _copy(value)
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.batches"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    # through JSON now, so that a restore from memory and one from disk see the very same values
    meta = json.loads(json.dumps({"param_groups": opt["param_groups"], "optimiser_scalars": scalars, "config": config}))
    return Snapshot(step, seconds, tensors, meta)


def restore_weights(snapshot: Snapshot, model: nn.Module, ema: nn.Module, optimiser: torch.optim.Optimizer) -> None:
    """Load model, EMA and optimiser state; checks everything first, so a mismatch changes nothing."""
    model_sd, ema_sd = _part(snapshot, "model."), _part(snapshot, "ema.")
    _check_fits(snapshot.source, model_sd, model.state_dict())
    _check_fits(snapshot.source, ema_sd, ema.state_dict())
    opt = _optimiser_state(snapshot, optimiser)
    model.load_state_dict(model_sd)
    ema.load_state_dict(ema_sd)
    optimiser.load_state_dict(opt)


def restore_rng(snapshot: Snapshot, generator: torch.Generator) -> None:
    """Set the torch, CUDA and batch RNG states (the data position) to those captured."""
    torch.set_rng_state(snapshot.tensors["rng.torch"])
    try:
        generator.set_state(snapshot.tensors["rng.batches"])
    except RuntimeError as err:
        raise ValueError(f"{snapshot.source}: the batch generator state does not fit this run's ({err})") from err
    cuda = [snapshot.tensors[k] for k in sorted(snapshot.tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        warnings.warn(
            f"{snapshot.source} holds {len(cuda)} CUDA RNG states that cannot be restored here; the run "
            f"continues, but its noise differs from an uninterrupted one",
            stacklevel=2,
        )


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoint files in run_dir/checkpoints, newest step first."""
    found = [p for p in (run_dir / "checkpoints").glob(PATTERN) if _step_of(p) is not None]
    return sorted(found, key=_step_of, reverse=True)


def save(snapshot: Snapshot, run_dir: Path, keep: int) -> Path:
    """Write run_dir/checkpoints/step-XXXXXXXX.safetensors atomically and delete all but the newest `keep`."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step-*.tmp"):  # left by a process killed while writing
        stale.unlink()
    record = {
        "format": FORMAT,
        "step": snapshot.step,
        "seconds": snapshot.seconds,
        **snapshot.meta,
        "sha256": digest(snapshot.tensors),
    }
    path = folder / f"step-{snapshot.step:08d}.safetensors"
    atomic_write(path, safetensors_bytes(snapshot.tensors, metadata={"vpfb": json.dumps(record)}))
    for old in checkpoint_paths(run_dir)[keep:]:
        old.unlink()
    return path


def read(path: Path) -> Snapshot:
    """Read and verify one checkpoint; raises CorruptCheckpointError when it is not intact."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            record = json.loads((fh.metadata() or {})["vpfb"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # safetensors raises several types for truncated or garbage files
        raise CorruptCheckpointError(f"unreadable ({type(err).__name__}: {err})") from err
    if record.get("format") != FORMAT:
        raise CorruptCheckpointError(f"unknown checkpoint format {record.get('format')!r} (expected {FORMAT})")
    missing = {"step", "seconds", "sha256", *META_KEYS} - set(record)
    if missing:
        raise CorruptCheckpointError(f"its record lacks {sorted(missing)}")
    if digest(tensors) != record["sha256"]:
        raise CorruptCheckpointError("checksum mismatch: the tensors differ from those written")
    return Snapshot(record["step"], record["seconds"], tensors, {k: record[k] for k in META_KEYS}, source=str(path))


def load_latest(run_dir: Path) -> Snapshot | None:
    """The newest intact checkpoint in run_dir (None if there are none); corrupt ones are skipped with a warning."""
    paths = checkpoint_paths(run_dir)
    reasons = []
    for path in paths:
        try:
            return read(path)
        except CorruptCheckpointError as err:
            warnings.warn(f"skipping checkpoint {path}: {err}; trying the one before", stacklevel=2)
            reasons.append(f"{path.name}: {err}")
    if paths:
        raise CorruptCheckpointError(
            f"no usable checkpoint in {run_dir / 'checkpoints'}: "
            + "; ".join(reasons)
            + ". Move the folder away to start afresh."
        )
    return None


def _copy(t: Tensor) -> Tensor:
    # an own contiguous CPU copy: safetensors refuses tensors that share memory
    return t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def _part(snapshot: Snapshot, prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in snapshot.tensors.items() if k.startswith(prefix)}


def _check_fits(source: str, saved: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not fit this model: missing {missing or 'nothing'}, "
            f"unexpected {unexpected or 'nothing'}"
        )
    for name, value in expected.items():
        if saved[name].shape != value.shape:
            raise ValueError(
                f"checkpoint {source} is from a different architecture: parameter {name} has shape "
                f"{tuple(saved[name].shape)}, model expects {tuple(value.shape)}"
            )


def _optimiser_state(snapshot: Snapshot, optimiser: torch.optim.Optimizer) -> dict:
    """Rebuild optimiser.state_dict() from the flat tensors and JSON, checking it against the optimiser's params."""
    params = [p for group in optimiser.param_groups for p in group["params"]]
    groups = snapshot.meta["param_groups"]
    saved_sizes = [len(g["params"]) for g in groups]
    sizes = [len(g["params"]) for g in optimiser.param_groups]
    if saved_sizes != sizes:
        raise ValueError(
            f"checkpoint {snapshot.source}: its optimiser has parameter groups of sizes {saved_sizes}, this one {sizes}"
        )
    state: dict[int, dict] = {int(i): dict(s) for i, s in snapshot.meta["optimiser_scalars"].items()}
    for key, value in _part(snapshot, "optimiser.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in state.items():
        for name, value in entries.items():
            if isinstance(value, Tensor) and value.dim() and value.shape != params[index].shape:
                raise ValueError(
                    f"checkpoint {snapshot.source}: optimiser {name} of parameter {index} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(params[index].shape)}"
                )
    return {"state": state, "param_groups": groups}


def _step_of(path: Path) -> int | None:
    digits = path.stem[len("step-") :]
    return int(digits) if digits.isdigit() else None
