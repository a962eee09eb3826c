"""Read PyTorch weight files without running anything they carry, and without torch.

A pickle names the callables that rebuild its objects, and `pickle.load` calls them: an EDM
snapshot (`network-snapshot-*.pkl`) names `torch_utils.persistence._reconstruct_persistent_obj`,
which executes the network's Python source stored in the file. This reader resolves every name a
file asks for against an allow-list of stand-ins that only build data:

* tensors and parameters (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`) become numpy
  arrays; their storages are read from the file's bytes (the legacy `torch.save` stream inside
  `torch.storage._load_from_bytes` for a pickled module, the `data/` entries of a zip file for a
  `torch.save` state dict);
* EDM's persistent objects become `Persistent` records (class name, constructor arguments,
  state), read as data: their source code is kept as text and never executed;
* containers (`collections.OrderedDict`, `dnnlib.util.EasyDict`, `set`) become dicts and sets,
  torch's module containers (`ModuleDict`, `ModuleList`, `Sequential`) records like the above.

Any other name ends the read with `UnsafePickle` naming it, before anything is called.
"""

import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np


class UnsafePickle(ValueError):
    """The file asks for a callable this reader does not allow (it could run code)."""


class UnreadableFile(ValueError):
    """Not a pickle or torch.save file, or a truncated one."""


@dataclasses.dataclass
class Persistent:
    """An object of EDM's `torch_utils.persistence`, as data: its class name, the arguments it was
    constructed with, and its state (a torch module's `__dict__`: `_parameters`, `_buffers`,
    `_modules` and plain attributes). `module_src`, the class's Python source, is never run."""

    class_name: str
    init_args: tuple
    init_kwargs: dict
    state: dict
    module_src: str = dataclasses.field(repr=False, default="")

    def tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The module's state dict: parameters and persistent buffers, `a.b.weight` names, in
        the order torch's `state_dict()` gives them."""
        out = {}
        skipped = self.state.get("_non_persistent_buffers_set") or set()
        for name, value in (self.state.get("_parameters") or {}).items():
            if value is not None:
                out[prefix + name] = value
        for name, value in (self.state.get("_buffers") or {}).items():
            if value is not None and name not in skipped:
                out[prefix + name] = value
        for name, child in (self.state.get("_modules") or {}).items():
            if isinstance(child, Persistent):
                out.update(child.tensors(f"{prefix}{name}."))
            elif child is not None:
                raise UnsafePickle(f"submodule {prefix}{name} is a {type(child).__name__}")
        return out

    def __setstate__(self, state: dict) -> None:  # pickle's BUILD of a torch container
        self.state = state

    def child(self, name: str) -> "Persistent | None":
        value = (self.state.get("_modules") or {}).get(name)
        return value if isinstance(value, Persistent) else None


CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")


def _container_class(name: str) -> type:
    """A stand-in type for a torch container module (ModuleDict, ModuleList, Sequential: no code
    of their own): pickle makes an empty instance (NEWOBJ) and fills its state (BUILD)."""
    attributes = {"class_name": name, "init_args": (), "init_kwargs": {}, "module_src": ""}
    return type(name, (Persistent,), attributes)


_CONTAINER_TYPES = {name: _container_class(name) for name in CONTAINERS}


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Persistent:
    """copyreg._reconstructor (pickle protocols 0-1), for the container stand-ins only."""
    if cls not in _CONTAINER_TYPES.values():
        raise UnsafePickle(f"an object of class {cls!r} built by copyreg")
    return cls.__new__(cls)


def _persistent(meta: dict) -> Persistent:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickle(f"a persistent object of an unknown kind ({type(meta).__name__})")
    state = meta.get("state") or {}
    return Persistent(
        class_name=str(meta.get("class_name")),
        init_args=tuple(state.get("_init_args") or ()),
        init_kwargs=dict(state.get("_init_kwargs") or {}),
        state=state,
        module_src=str(meta.get("module_src") or ""),
    )


# torch's storage classes -> the numpy dtype of their elements
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: Any


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 as data: the view (offset, size, stride) of a storage."""
    if not isinstance(storage, np.ndarray):
        raise UnsafePickle(f"a tensor whose storage is a {type(storage).__name__}")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if size and max((n - 1) * s for n, s in zip(size, stride)) + offset >= storage.size:
        raise UnsafePickle("a tensor reaching past the end of its storage (a damaged file)")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride]
    )
    return np.array(view)  # a copy: contiguous, owning its memory


def _rebuild_parameter(data, *_ignored) -> np.ndarray:
    return data


def _numpy_scalar(dtype, data: bytes) -> Any:
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(name, align=False, copy=False) -> np.dtype:
    return np.dtype(str(name))


def _set(items=()) -> set:
    return set(items)


def _frozenset(items=()) -> frozenset:
    return frozenset(items)


def _load_from_bytes(data: bytes) -> np.ndarray:
    """torch.storage._load_from_bytes as data: the legacy torch.save stream of one storage."""
    return _read_legacy(io.BytesIO(data))


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): dict,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("__builtin__", "set"): _set,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class _Unpickler(pickle.Unpickler):
    """find_class answers from the allow-list only; storages come from `storages`."""

    def __init__(self, file, storages=None):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch.nn.modules.container" and name in CONTAINERS:
            return _CONTAINER_TYPES[name]
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafePickle(
            f"the file asks to call {module}.{name}, which a weight file does not need: refused "
            "(nothing in it was run)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None or not isinstance(pid, tuple) or pid[:1] != ("storage",):
            raise UnsafePickle(f"an unexpected persistent id {str(pid)[:80]}")
        return self._storages(pid)


def _read_legacy(stream: io.BytesIO) -> Any:
    """torch.save's legacy stream: magic, protocol, system info, the object (storages by
    persistent id), the storage keys, then each storage's element count and bytes."""
    header = [_Unpickler(stream).load() for _ in range(3)]
    if not isinstance(header[1], int) or not isinstance(header[2], dict):
        raise UnsafePickle("not a torch.save stream")
    if not header[2].get("little_endian", True):
        raise UnsafePickle("a big-endian torch.save stream")
    wanted: dict[str, tuple[Any, int]] = {}
    arrays: dict[str, np.ndarray] = {}

    def storage(pid):
        _, kind, key, _location, numel, view = (tuple(pid) + (None,))[:6]
        if not isinstance(kind, _StorageType) or view is not None:
            raise UnsafePickle(f"a storage of an unsupported kind ({str(pid)[:80]})")
        wanted[key] = (kind.dtype, int(numel))
        return lambda: arrays[key]

    result = _Unpickler(stream, storage).load()
    keys = _Unpickler(stream).load()
    for key in keys:
        dtype, numel = wanted[key]
        (count,) = struct.unpack("<q", stream.read(8))
        raw = stream.read(count * np.dtype(dtype).itemsize)
        if count != numel or len(raw) != count * np.dtype(dtype).itemsize:
            raise UnsafePickle("a truncated storage (a damaged file)")
        arrays[key] = np.frombuffer(raw, dtype=dtype).copy()
    return _resolve(result)


def _resolve(value):
    """Storages were handed out as thunks (their bytes come after the object); call them."""
    return value() if callable(value) else value


def read_pickle(path: str) -> Any:
    """A pickled object (an EDM snapshot) as data: numpy arrays and `Persistent` records."""
    with open(path, "rb") as f:
        return _Unpickler(f).load()


def read_torch_save(path: str) -> Any:
    """A file written by torch.save (the zip format: a state dict of tensors, or a dict holding
    one) as data: numpy arrays in its containers."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        [pickled] = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        folder = pickled[: -len("data.pkl")]

        def storage(pid):
            _, kind, key, _location, numel = pid
            if not isinstance(kind, _StorageType):
                raise UnsafePickle(f"a storage of an unsupported kind ({str(pid)[:80]})")
            raw = archive.read(f"{folder}data/{key}")
            if len(raw) < int(numel) * np.dtype(kind.dtype).itemsize:
                raise UnsafePickle("a truncated storage (a damaged file)")
            return np.frombuffer(raw, dtype=kind.dtype)[: int(numel)].copy()

        with archive.open(pickled) as f:
            return _Unpickler(f, storage).load()


def read(path: str) -> Any:
    """An EDM snapshot pickle or a torch.save file, told apart by their first bytes; UnsafePickle
    for a file that asks for anything else, UnreadableFile for one that is truncated or not a
    pickle at all."""
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        return read_torch_save(path) if head[:2] == b"PK" else read_pickle(path)
    except UnsafePickle:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError,
            ValueError, TypeError) as err:  # fmt: skip
        raise UnreadableFile(
            f"{path} is not a readable weight file ({type(err).__name__}: {err}); a truncated "
            "download? fetch it again"
        ) from None
