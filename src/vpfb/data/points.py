"""User point clouds from .npy, .npz and .csv files, and the standardisation a run stores with its weights."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

POINT_FILES = (".npy", ".npz", ".csv")


def _read(path: Path, key: str | None) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if key is None and len(keys) != 1:
                raise ValueError(f"{path} holds several arrays ({', '.join(keys)}); say which one to use")
            if key is not None and key not in keys:
                raise ValueError(f"{path} has no array {key!r}; it holds {', '.join(keys)}")
            return archive[key or keys[0]]
    with open(path) as fh:
        first = fh.readline()
    skip = 0 if _is_numeric_row(first) else 1  # one header row is allowed
    try:
        return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path} is not a numeric comma-separated table: {err}") from err


def _is_numeric_row(line: str) -> bool:
    try:
        [float(v) for v in line.strip().split(",")]
        return True
    except ValueError:
        return False


def load_points(path: str | Path, key: str | None = None) -> Tensor:
    """Points [N, d] (float32) from a .npy, .npz (one array, or `key`) or .csv file; never unpickles."""
    path = Path(path)
    if path.suffix not in POINT_FILES:
        raise ValueError(f"cannot read {path}: point files must end in {', '.join(POINT_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        array = _read(path, key)
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is corrupt or not a {path.suffix} file: {err}") from err
    except ValueError as err:
        if "pickle" in str(err):  # numpy refuses object arrays, and takes unknown bytes for a pickle
            raise ValueError(f"{path} is corrupt or holds Python objects, which vpfb never unpickles") from err
        raise
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path} holds {array.dtype} values, not numbers")
    if array.ndim != 2:
        hint = " (for 1-D data use x.reshape(-1, 1))" if array.ndim == 1 else ""
        raise ValueError(f"{path} must hold an array of shape [N, d], got shape {array.shape}{hint}")
    if array.shape[0] < 2:
        raise ValueError(f"{path} holds {array.shape[0]} points; at least 2 are needed")
    bad = ~np.isfinite(array).all(1)
    if bad.any():
        raise ValueError(f"{path} has NaN or inf in {int(bad.sum())} of {len(array)} rows (first: row "
                         f"{int(np.argmax(bad))}); clean or drop them first")
    return torch.as_tensor(array, dtype=torch.float32)


@dataclass
class Standardizer:
    """z = (x − mean)/std per column; log p_x(x) = log p_z(z) − Σ log std."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor) -> Standardizer:
        std = x.std(0)
        return cls(x.mean(0), torch.where(std > 0, std, torch.ones_like(std)))  # a constant column keeps scale 1

    def transform(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std.to(z) + self.mean.to(z)

    def log_abs_det(self) -> float:
        return float(self.std.log().sum())

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Standardizer:
        return cls(torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["std"], dtype=torch.float32))
