"""A run directory's identity and lock. Before anything is written, `claim` checks that the directory is new, or holds
the same run (configuration, data fingerprint), and takes an exclusive lock for the whole training; it then records
what made the run in run.json, so that a later command can tell whether it continues this run or a different one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

from vpfb import __version__
from vpfb.files import atomic_write

RECORD, LOCK = "run.json", ".lock"
EXISTING = ("check", "resume", "restart")
# settings that change how a run is logged or where it runs, not what it trains: they may differ on a resume
BOOKKEEPING = (
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.sample_every",
    "train.tensorboard",
    "train.device",
    "eval.",
)
# what a run writes; "restart" removes these, and only these
RUN_FILES = (
    "checkpoints",
    "samples",
    "eval",
    "tensorboard",
    "metrics.csv",
    "metrics.json",
    "model.safetensors",
    "model.json",
    "config.yaml",
    RECORD,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs there go unlocked
    fcntl = None


class RunDirectoryError(ValueError):
    """A run directory that this command must not use as it stands (another run, another process, a user's folder)."""


@contextlib.contextmanager
def claim(run_dir: str | Path | None, config: dict, data: str, existing: str = "check") -> Iterator[Path | None]:
    """Hold run_dir for one training: refuse a folder that is not a run, lock it against other processes, and compare
    the recorded run with this one (`config` as a nested dict, `data` a fingerprint of the training data).

    existing="check" resumes only the same run and otherwise raises, naming the differences; "resume" continues the
    recorded run under the new settings (with a warning listing them); "restart" deletes the old run's files first.
    run_dir=None yields None and checks nothing."""
    if existing not in EXISTING:
        raise ValueError(f"existing must be one of {EXISTING}, got {existing!r}")
    if run_dir is None:
        yield None
        return
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise RunDirectoryError(f"{run} is a file; give a directory as --out")
    foreign = (
        run.is_dir()
        and not (run / RECORD).exists()
        and not (run / "checkpoints").is_dir()
        and any(entry.name != LOCK for entry in run.iterdir())
    )
    if foreign:
        raise RunDirectoryError(
            f"{run} is not empty and holds no vpfb run; nothing was written there. Give a new or empty --out"
        )
    run.mkdir(parents=True, exist_ok=True)
    with _locked(run):
        record = {"config": config, "data": data, "vpfb": __version__}
        if existing == "restart":
            _remove_run(run)
        elif existing == "check" or (run / RECORD).exists():
            _compare(run, record, existing)
        atomic_write(run / RECORD, json.dumps(record, indent=2).encode())
        yield run


def _compare(run: Path, record: dict, existing: str) -> None:
    """Raise (check) or warn (resume) when `run` holds a run other than `record`."""
    if not (run / RECORD).exists():
        if (run / "checkpoints").is_dir() and existing == "check":
            raise RunDirectoryError(
                f"{run} holds a run without a record of what made it (an older vpfb); add "
                f"--resume to continue it, --force to start afresh, or give a new --out"
            )
        return
    try:
        old = json.loads((run / RECORD).read_text())
        differences = _differences(old["config"], record["config"])
        if old["data"] != record["data"]:
            differences.insert(0, "the training data differ (another file or content)")
    except (ValueError, KeyError, TypeError) as err:
        raise RunDirectoryError(f"{run / RECORD} is damaged ({err}); add --force to start the run afresh") from err
    if old.get("vpfb") != record["vpfb"]:
        warnings.warn(
            f"{run} was made by vpfb {old.get('vpfb')}, this is {record['vpfb']}: a resumed run may differ "
            f"from an uninterrupted one",
            stacklevel=4,
        )
    if not differences:
        return
    listed = "; ".join(differences)
    if existing == "check":
        raise RunDirectoryError(
            f"{run} holds a different run ({listed}); nothing was changed. Give a new --out, add "
            f"--resume to continue that run with these settings, or --force to discard it and "
            f"start afresh"
        )
    warnings.warn(f"resuming {run} with other settings than it was started with ({listed})", stacklevel=4)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old → new' for every setting that differs, bookkeeping keys aside."""
    out = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{name}.")
        elif a != b and not any(name == k or (k.endswith(".") and name.startswith(k)) for k in BOOKKEEPING):
            out.append(f"{name}: {a!r} → {b!r}")
    return out


def _remove_run(run: Path) -> None:
    for name in RUN_FILES:
        target = run / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


@contextlib.contextmanager
def _locked(run: Path) -> Iterator[None]:
    """An exclusive advisory lock on run/.lock for the block; the system releases it if the process dies."""
    if fcntl is None:
        yield
        return
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirectoryError(
                f"another vpfb process (pid {holder}) is training in {run}; wait for it or give another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
