"""A trained model on disk: weights in safetensors, metadata in JSON, both written atomically and checked on
reading (format, SHA-256 of the weights, finite statistics, architecture). Loading never unpickles."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from vpfb import __version__
from vpfb.config import from_dict
from vpfb.data import Standardizer
from vpfb.factory import build_potential
from vpfb.files import atomic_write, digest

WEIGHTS, METADATA, FORMAT = "model.safetensors", "model.json", 1


def write_model(directory: str | Path, state: dict[str, Tensor], meta: dict) -> None:
    """state (a potential's state_dict) and meta (JSON-able) into `directory`, with format, version and checksum."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": FORMAT, "vpfb_version": __version__, **meta, "sha256": digest(state)}
    atomic_write(directory / WEIGHTS, safetensors_bytes(state))
    atomic_write(directory / METADATA, json.dumps(meta, indent=2).encode())


def read_model(directory: str | Path) -> dict:
    """The EnergyModel arguments (potential with its weights, config, standardizer, shape, num_classes,
    read_out_t) stored in `directory`; a clear error for a missing, corrupt or mismatched file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"run directory {directory} does not exist")
    for name in (METADATA, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a trained vpfb model: {name} is missing")
    try:
        meta = json.loads((directory / METADATA).read_text())
        config = from_dict(meta["config"], where=str(directory / METADATA))
        standardizer = Standardizer.from_dict(meta["standardizer"])
        shape = tuple(int(n) for n in meta.get("shape", [meta["dim"]]))
        read_out_t = meta.get("read_out_t")  # None in older files: the configuration's
        if read_out_t is not None and not 0 < float(read_out_t) <= 1:
            raise TypeError(f"read_out_t = {read_out_t} lies outside (0, 1]")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{directory / METADATA} is corrupt or not a vpfb model file: {err}") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory} uses model format {meta.get('format')}, this vpfb reads {FORMAT}")
    try:
        state = load_file(directory / WEIGHTS)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{directory / WEIGHTS} is corrupt: {err}") from err
    if "sha256" in meta and digest(state) != meta["sha256"]:  # older runs carry no checksum
        raise ValueError(f"{directory / WEIGHTS} is corrupt: its checksum differs from the one in {METADATA}")
    statistics = (standardizer.mean, standardizer.std)
    if not all(torch.isfinite(v).all() for v in statistics) or not bool((standardizer.std > 0).all()):
        raise ValueError(f"{directory / METADATA} is corrupt: its data statistics are not finite and positive")
    potential = build_potential(config, shape, meta.get("num_classes"))
    try:
        potential.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{directory / WEIGHTS} does not match the architecture in its config: {err}") from err
    return {
        "potential": potential,
        "config": config,
        "standardizer": standardizer,
        "shape": shape,
        "num_classes": meta.get("num_classes"),
        "read_out_t": read_out_t,
    }
