"""User point clouds from .npy, .npz and .csv files, and the standardisation a run stores with its weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vpfb.data.arrays import load_numpy

POINT_FILES = (".npy", ".npz", ".csv")


def _read_numpy(path: Path, key: str | None) -> np.ndarray:
    """The array in a .npy file, or the one (or `key`) in a .npz archive; whichever the bytes hold, never unpickled."""
    loaded = load_numpy(path)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        if key is not None:
            raise ValueError(f"{path} holds a single array; key={key!r} only applies to .npz archives")
        return loaded
    with loaded:
        keys = list(loaded.keys())
        if key is None and len(keys) != 1:
            raise ValueError(
                f"{path} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); choose one with key= "
                f"(on the command line: data.key=NAME)"
            )
        if key is not None and key not in keys:
            raise ValueError(f"{path} has no array {key!r}; it holds {', '.join(keys)}")
        try:
            return loaded[key or keys[0]]
        except ValueError as err:
            raise ValueError(f"{path}: array {key or keys[0]!r} holds Python objects, which are not loaded") from err


def _read_csv(path: Path) -> np.ndarray:
    """A numeric comma-separated table; a first row none of whose fields is a number is a header and skipped (a
    first data row with a typo is an error, not a header)."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if lines and not any(_is_number(field) for field in lines[0].split(",")):
        lines = lines[1:]
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path} has no data rows")
    try:
        return np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path} is not a numeric comma-separated table: {err}") from err


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_array(path: Path, array: np.ndarray) -> None:
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{path} holds {array.dtype} values; points must be integers or floats")
    if array.ndim != 2:
        hint = "; for 1-D data save x.reshape(-1, 1)" if array.ndim == 1 else ""
        raise ValueError(f"{path} must hold a 2-D array [N, d], got shape {array.shape}{hint}")
    if array.shape[0] < 2:
        raise ValueError(f"{path} holds {array.shape[0]} point(s); at least 2 are needed")
    bad = ~np.isfinite(array).all(1)
    if bad.any():
        raise ValueError(
            f"{path} has NaN or inf in {int(bad.sum())} of {len(array)} rows (first: row "
            f"{int(np.argmax(bad))}, counting data rows from 0); drop or fix them first"
        )


def load_points(path: str | Path, key: str | None = None) -> Tensor:
    """Points [N, d] (float32) from a .npy file, a .npz archive (its only array, or `key`) or a .csv table."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in POINT_FILES:
        raise ValueError(f"cannot read {path}: point files must end in {', '.join(POINT_FILES)}")
    if suffix == ".csv" and key is not None:
        raise ValueError(f"{path} is a table; key={key!r} only applies to .npz archives")
    array = _read_csv(path) if suffix == ".csv" else _read_numpy(path, key)
    _check_array(path, array)
    return torch.as_tensor(array, dtype=torch.float32)


@dataclass
class Standardizer:
    """Per-column z = (x − mean)/std, so that log p_x(x) = log p_z(z) − Σ log std."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor) -> Standardizer:
        """Column means and standard deviations of x [N, d]; a constant column gets std 1."""
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"a standardizer is fitted to points [N, d] with N >= 2, got shape {tuple(x.shape)}")
        x64 = x.detach().double()
        mean, std = x64.mean(0), x64.std(0)
        # rounding leaves a constant column with a std of about 1e-16 of its size rather than exactly 0
        constant = std <= 1e-12 * x64.abs().amax(0)
        std = torch.where(constant, torch.ones_like(std), std)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return cls(mean.to(dtype), std.to(dtype))

    def transform(self, x: Tensor) -> Tensor:
        """(x − mean)/std."""
        return (x - self.mean.to(x)) / self.std.to(x)

    def inverse(self, z: Tensor) -> Tensor:
        """z·std + mean."""
        return z * self.std.to(z) + self.mean.to(z)

    def log_abs_det(self) -> float:
        """Σ log std, the log-volume of one standardised unit in user units."""
        return float(self.std.double().log().sum())

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Standardizer:
        mean, std = (torch.tensor(d[k], dtype=torch.float32) for k in ("mean", "std"))
        if mean.shape != std.shape or mean.ndim != 1 or not bool((std > 0).all()):
            raise ValueError(f"a stored standardizer needs equal-length mean and positive std lists, got {d}")
        return cls(mean, std)
