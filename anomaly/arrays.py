"""Reading `.npz` array files that a user hands us, with every size checked before allocation.

`np.load` trusts the shape in each member's header: a few bytes that declare a huge array make
it allocate that much memory, and a compressed member can inflate a thousandfold. Here each
member's declared size must match the bytes it holds, object arrays (pickles) are refused,
and compressed members may not inflate past a bound.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

# Deflate rarely exceeds ~10x on weights and maps; far above that a member is a zip bomb.
MAX_INFLATION = 200


class NpzArrays(dict):
    """Arrays by name, read like `np.load`'s NpzFile (`files`, `with ... as data`)."""

    @property
    def files(self) -> list[str]:
        return list(self)

    def __enter__(self) -> NpzArrays:
        return self

    def __exit__(self, *exc) -> None:
        return None


def load_npz(path: str | Path) -> NpzArrays:
    """All arrays of an `.npz` file (as written by `np.savez` or `np.savez_compressed`).

    Args:
        path: the file.

    Returns:
        The arrays by name, in the file's order, read whole (the file is closed).

    Raises:
        ValueError: a one-line reason when the file is not an archive of plain arrays whose
            sizes agree with their headers.
        OSError: the file cannot be read.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError("not an .npz archive (truncated or corrupt file)") from None
    arrays = NpzArrays()
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not an array")
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATION * max(info.compress_size, 1):
                raise ValueError(f"member {info.filename!r} inflates {info.file_size} bytes from "
                                 f"{info.compress_size} (refused)")
            try:
                with archive.open(info) as f:
                    arrays[info.filename[:-4]] = _read_member(f, info.file_size)
            except (zipfile.BadZipFile, EOFError) as exc:
                raise ValueError(f"member {info.filename!r} is corrupt ({exc})") from None
    return arrays


def _read_member(f, member_size: int) -> np.ndarray:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("holds Python objects (pickles are refused)")
    nbytes = math.prod(int(n) for n in shape) * dtype.itemsize
    header = f.tell()
    if nbytes != member_size - header:
        raise ValueError(f"array header declares {nbytes} bytes of data, the member holds {member_size - header}")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError("truncated array data")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()
