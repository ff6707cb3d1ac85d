"""Reading .npy and .npz files safely: never unpickled, and no allocation larger than the file can fill."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np


def load_numpy(path: Path):
    """np.load(path, allow_pickle=False) (an array, or an NpzFile), after checking that each array's header asks for
    no more bytes than its file holds: a damaged or forged header could otherwise request terabytes."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    with archive.open(member) as fh:
                        _check_header(path, fh, member.file_size, f" (array {member.filename})")
        else:
            with open(path, "rb") as fh:
                _check_header(path, fh, path.stat().st_size, "")
        return np.load(path, allow_pickle=False)
    except OversizedHeader as err:
        raise ValueError(f"{path}: {err}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # numpy calls foreign bytes "pickled data"
        raise ValueError(f"{path} is not a readable numpy file or holds Python objects ({err})") from err


class OversizedHeader(ValueError):
    pass


def _check_header(path: Path, fh, size: int, what: str) -> None:
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    if dtype.hasobject:
        return  # refused by np.load itself, as holding Python objects
    need, held = math.prod(shape) * dtype.itemsize, size - fh.tell()
    if need > held:
        raise OversizedHeader(
            f"its header{what} declares shape {shape} of {dtype} ({need:,} bytes), more than the "
            f"{held:,} bytes of data it holds: the file is damaged"
        )
