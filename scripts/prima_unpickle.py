"""Restricted reader for ``torch.save`` zip archives that never runs checkpoint code.

The official Prima checkpoint is a whole pickled ``FullMRIModel``; loading it the normal
way needs the upstream package, ``transformers`` and ``weights_only=False``, i.e. it lets
the file run arbitrary code. This module reads the archive with its own unpickler:

* tensors and storages are materialised as lazy numpy views of the archive (memory-mapped
  when the zip entry is stored uncompressed, which ``torch.save`` always does);
* module classes from an allowlisted set of module names become inert stand-ins
  (:class:`Stub`) that only record what the pickle hands them;
* a handful of harmless globals (``OrderedDict``, ``set``, dtypes, numpy scalars) are
  replaced by our own implementations;
* everything else - ``os.system``, ``builtins.eval``, ``getattr`` ... - is refused with
  :class:`UnsafeCheckpointError`, and so is any attempt to call (REDUCE / NEWOBJ / INST /
  OBJ) something that is not on the allowlist.

torch itself is not imported: nothing here needs it, and it keeps conversion fast.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "Stub",
    "LazyTensor",
    "TorchArchive",
    "load_torch_file",
    "restricted_loads",
]


class CheckpointError(Exception):
    """The file is not a checkpoint we can read (format problem, not a security one)."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for something outside the allowlist; nothing was executed."""


# ---------------------------------------------------------------------------------------
# Inert stand-ins for module objects


class Stub:
    """Instance of a pickled class we do not import. Records state, never runs anything."""

    _stub_module = "?"
    _stub_name = "?"

    def __init__(self, *args, **kwargs):  # only ever called by our REDUCE/NEWOBJ handlers
        object.__setattr__(self, "_stub_args", args)
        object.__setattr__(self, "_stub_kwargs", kwargs)

    def __setstate__(self, state):
        slotstate = None
        if isinstance(state, tuple) and len(state) == 2 and (
            state[0] is None or isinstance(state[0], dict)
        ):
            state, slotstate = state
        # dunder keys are dropped: an instance __setstate__/__getattr__ would shadow ours
        if isinstance(state, dict):
            for k, v in state.items():
                if isinstance(k, str) and not k.startswith("__"):
                    self.__dict__[k] = v
        elif state is not None:
            self.__dict__["_stub_state"] = state
        if isinstance(slotstate, dict):
            for k, v in slotstate.items():
                if isinstance(k, str) and not k.startswith("__"):
                    self.__dict__[k] = v

    @classmethod
    def qualified_name(cls) -> str:
        return f"{cls._stub_module}.{cls._stub_name}"

    def __repr__(self):
        return f"<stub {self.qualified_name()}>"


_STUB_CLASSES: Dict[Tuple[str, str], type] = {}


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    cls = _STUB_CLASSES.get(key)
    if cls is None:
        # The name is data from the file: it is only stored, never resolved or imported.
        cls = type("Stub_" + "".join(c if c.isalnum() else "_" for c in name), (Stub,), {})
        cls._stub_module = module
        cls._stub_name = name
        _STUB_CLASSES[key] = cls
    return cls


# Modules whose classes are replaced by stubs. Exact names, then prefixes.
# Upstream's loader resolves these (tools/models.py maps complete_visual_model and
# __main__ to its FullMRIModel; model/model_parts/patchify to Prima_training_and_evaluation).
STUB_MODULES_EXACT = {
    "model_parts",
    "model",
    "patchify",
    "complete_visual_model",
    "full_model",
    "tools.models",
    "__main__",
    "torch.nn",
}
STUB_MODULE_PREFIXES = (
    "torch.nn.",  # includes torch.nn.parallel.DataParallel wrappers
    "transformers.",
    "Prima_training_and_evaluation.",
    # third-party layers upstream's modules are built from
    "einops.layers.",
    "positional_encodings.",
    "perceiver_pytorch.",
    # a tokenizer saved as a whole module rather than a state_dict
    "generative.networks.",
    "monai.networks.",
)


def _is_stub_module(module: str) -> bool:
    return module in STUB_MODULES_EXACT or module.startswith(STUB_MODULE_PREFIXES)


# ---------------------------------------------------------------------------------------
# Storages and tensors

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # converted by LazyTensor.numpy()
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "UntypedStorage": np.dtype("u1"),
}
_TORCH_DTYPE_NAMES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}


class StorageType:
    """Marker for ``torch.<X>Storage`` globals (not callable)."""

    def __init__(self, name: str):
        self.name = name
        self.np_dtype = _STORAGE_DTYPES[name]
        self.torch_dtype = _TORCH_DTYPE_NAMES[name]

    def __repr__(self):
        return f"torch.{self.name}"


class Storage:
    def __init__(self, archive: "TorchArchive", key: str, stype: StorageType, numel: int):
        self.archive = archive
        self.key = key
        self.stype = stype
        self.numel = int(numel)
        self._data: Optional[np.ndarray] = None

    def data(self) -> np.ndarray:
        if self._data is None:
            raw = self.archive.storage_bytes(self.key)
            dt = self.stype.np_dtype
            if self.archive.big_endian:
                dt = dt.newbyteorder(">")
            need = self.numel * dt.itemsize
            if raw.shape[0] < need:
                raise CheckpointError(
                    f"storage {self.key} holds {raw.shape[0]} bytes, {need} needed"
                )
            self._data = raw[:need].view(dt)
        return self._data


class LazyTensor:
    """A tensor as ``torch._utils._rebuild_tensor_v2`` describes it; data read on demand."""

    def __init__(self, storage: Storage, offset: int, size, stride, requires_grad=False):
        self.storage = storage
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        self.requires_grad = bool(requires_grad)
        self.is_parameter = False
        if len(self.shape) != len(self.stride):
            raise CheckpointError("tensor size and stride differ in length")
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride):
            raise CheckpointError("negative tensor size or stride")
        numel = self.numel
        if numel:
            last = self.offset + sum((n - 1) * st for n, st in zip(self.shape, self.stride))
            if self.offset < 0 or last >= storage.numel:
                raise CheckpointError(
                    f"tensor view exceeds its storage ({storage.key}: {storage.numel} elements)"
                )

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def dtype(self) -> str:
        return self.storage.stype.torch_dtype

    def alias_key(self):
        """Two tensors with equal keys are the same data (what state_dict aliasing means)."""
        return (id(self.storage), self.offset, self.shape, self.stride)

    def numpy(self) -> np.ndarray:
        """The values as a C-contiguous native-endian array (bfloat16 widened to float32)."""
        if self.numel == 0:
            dt = np.dtype("<f4") if self.dtype == "bfloat16" else self.storage.stype.np_dtype
            return np.zeros(self.shape, dtype=dt.newbyteorder("="))
        base = self.storage.data()
        item = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.shape,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        arr = np.ascontiguousarray(view)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if self.dtype == "bfloat16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr

    def __repr__(self):
        return f"LazyTensor({self.dtype}, {list(self.shape)})"


# ---------------------------------------------------------------------------------------
# Safe replacements for the globals torch pickles reference


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, Storage):
        raise UnsafeCheckpointError("_rebuild_tensor_v2 called without a storage")
    return LazyTensor(storage, storage_offset, size, stride, requires_grad)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    if not isinstance(data, LazyTensor):
        raise UnsafeCheckpointError("_rebuild_parameter called without a tensor")
    data.is_parameter = True
    data.requires_grad = bool(requires_grad)
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data, requires_grad, backward_hooks)


class _TensorType:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


_TENSOR_TYPES = {
    ("torch", "Tensor"): _TensorType("torch.Tensor"),
    ("torch._tensor", "Tensor"): _TensorType("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorType("torch.nn.Parameter"),
    ("torch.nn", "Parameter"): _TensorType("torch.nn.Parameter"),
}


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch wraps tensors that carry Python attributes this way; func comes from the file,
    # so it must be one of our own rebuild functions.
    if func not in (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state):
        raise UnsafeCheckpointError(f"_rebuild_from_type_v2 with disallowed function {func!r}")
    if not isinstance(new_type, _TensorType):
        raise UnsafeCheckpointError(f"_rebuild_from_type_v2 with disallowed type {new_type!r}")
    t = func(*args)
    if new_type.name == "torch.nn.Parameter":
        t.is_parameter = True
    return t


class _TorchScalarMarker(str):
    """torch.dtype / torch.device / layout / memory format values: kept as text."""


def _torch_device(*args):
    return _TorchScalarMarker("device:" + ":".join(str(a) for a in args))


def _torch_size(seq=()):
    return tuple(int(x) for x in seq)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # protocol 2 pickles bytes as _codecs.encode(str, 'latin1')
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafeCheckpointError("_codecs.encode with unexpected arguments")
    return obj.encode(encoding, errors)


def _reconstructor(cls, base, state=None):
    # copyreg._reconstructor: protocol 0/1 object reconstruction
    if isinstance(cls, type) and issubclass(cls, Stub) and base is object:
        return cls()
    raise UnsafeCheckpointError(f"copyreg._reconstructor for disallowed class {cls!r}")


_NP_DTYPE_OK = set("?bhilqBHILQefdgFDG") | {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4",
                                            "u8", "f2", "f4", "f8", "c8", "c16"}


def _np_dtype(obj, align=False, copy=False):
    if not isinstance(obj, str) or obj.lstrip("<>|=") not in _NP_DTYPE_OK:
        raise UnsafeCheckpointError(f"numpy.dtype({obj!r}) is not a plain numeric dtype")
    return np.dtype(obj)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeCheckpointError("numpy scalar of a non-numeric dtype")
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeCheckpointError("numpy scalar without raw bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


class _NdarrayPlaceholder:
    """numpy.core.multiarray._reconstruct result, filled in by BUILD."""

    def __init__(self):
        self.value = None


def _np_reconstruct(cls, shape, dtype_code):
    if cls is not _NDARRAY_TYPE:
        raise UnsafeCheckpointError("numpy _reconstruct of a non-ndarray class")
    return _NdarrayPlaceholder()


_NDARRAY_TYPE = object()


def _safe_set(items=()):
    return set(items)


def _safe_frozenset(items=()):
    return frozenset(items)


def _ordered_dict(items=()):
    return collections.OrderedDict(items)


# (module, name) -> what find_class hands back. Callables here are the only ones a
# pickle can ever invoke (besides stub classes, whose "call" records its arguments).
_SAFE_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "device"): _torch_device,
    ("torch", "Size"): _torch_size,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _safe_set,
    ("builtins", "frozenset"): _safe_frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,  # only ever the `base` argument of _reconstructor
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NDARRAY_TYPE,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
}
_SAFE_GLOBALS.update(_TENSOR_TYPES)
for _n in _STORAGE_DTYPES:
    _SAFE_GLOBALS[("torch", _n)] = StorageType(_n)
    _SAFE_GLOBALS[("torch.storage", _n)] = _SAFE_GLOBALS[("torch", _n)]
for _n in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
           "uint8", "bool", "complex64", "complex128", "float", "double", "half", "long",
           "int", "strided", "sparse_coo", "contiguous_format", "channels_last",
           "preserve_format"):
    _SAFE_GLOBALS[("torch", _n)] = _TorchScalarMarker(_n)

_SAFE_CALLABLES = {
    id(v): v
    for v in _SAFE_GLOBALS.values()
    if callable(v) and v is not object
}

_COMPAT_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _describe(obj) -> str:
    if isinstance(obj, type) and issubclass(obj, Stub):
        return obj.qualified_name()
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    mod = getattr(obj, "__module__", None)
    if name:
        return f"{mod}.{name}" if mod else name
    return type(obj).__name__


# ---------------------------------------------------------------------------------------
# The unpickler


class RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler with every code path that calls something intercepted."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, persistent_load: Optional[Callable[[Any], Any]] = None):
        super().__init__(file, fix_imports=False, encoding="utf-8")
        self._persistent = persistent_load

    # -- globals
    def find_class(self, module, name):
        module = _COMPAT_MODULES.get(module, module)
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafeCheckpointError("global with a non-string name")
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        if _is_stub_module(module) and "." not in name and not name.startswith("__"):
            return _stub_class(module, name)
        raise UnsafeCheckpointError(f"refusing global '{module}.{name}' (not on the allowlist)")

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafeCheckpointError("persistent id in a plain pickle")
        return self._persistent(pid)

    # -- every opcode that calls an object
    def _call(self, func, args, opname):
        if isinstance(func, type) and issubclass(func, Stub):
            return func(*args)
        if id(func) in _SAFE_CALLABLES and _SAFE_CALLABLES[id(func)] is func:
            return func(*args)
        raise UnsafeCheckpointError(f"refusing {opname} of '{_describe(func)}'")

    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if not isinstance(args, tuple):
            raise UnsafeCheckpointError("REDUCE with non-tuple arguments")
        stack[-1] = self._call(func, args, "REDUCE")

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new(self, cls, args, opname):
        if isinstance(cls, type) and issubclass(cls, Stub):
            return cls(*args)
        if cls is _ordered_dict and not args:
            return collections.OrderedDict()
        raise UnsafeCheckpointError(f"refusing {opname} of '{_describe(cls)}'")

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, tuple(args), "NEWOBJ"))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if kwargs:
            raise UnsafeCheckpointError("NEWOBJ_EX with keyword arguments")
        self.append(self._new(cls, tuple(args), "NEWOBJ_EX"))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_inst(self):
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        klass = self.find_class(module, name)
        args = tuple(self.pop_mark())
        self.append(self._new(klass, args, "INST"))

    dispatch[pickle.INST[0]] = load_inst

    def load_obj(self):
        args = self.pop_mark()
        cls = args.pop(0)
        self.append(self._new(cls, tuple(args), "OBJ"))

    dispatch[pickle.OBJ[0]] = load_obj

    def load_build(self):
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, Stub):
            Stub.__setstate__(inst, state)
        elif isinstance(inst, collections.OrderedDict):
            # state_dicts carry `_metadata` as an attribute
            if isinstance(state, dict):
                for k, v in state.items():
                    if isinstance(k, str) and not k.startswith("__"):
                        setattr(inst, k, v)
            elif state is not None:
                raise UnsafeCheckpointError("BUILD of an OrderedDict with odd state")
        elif isinstance(inst, LazyTensor):
            pass  # requires_grad / hooks of legacy tensor pickles: irrelevant here
        elif isinstance(inst, np.dtype):
            if isinstance(state, tuple) and len(state) > 1 and state[1] == ">":
                stack[-1] = inst.newbyteorder(">")
        elif isinstance(inst, _NdarrayPlaceholder):
            # (version, shape, dtype, is_fortran, rawdata)
            if not (isinstance(state, tuple) and len(state) == 5):
                raise UnsafeCheckpointError("numpy array with unexpected state")
            _, shape, dtype, fortran, raw = state
            if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(
                raw, (bytes, bytearray)
            ):
                raise UnsafeCheckpointError("numpy array of objects or without raw data")
            arr = np.frombuffer(bytes(raw), dtype=dtype).reshape(
                tuple(shape), order="F" if fortran else "C"
            )
            stack[-1] = arr
        else:
            raise UnsafeCheckpointError(f"refusing BUILD of '{_describe(type(inst))}'")

    dispatch[pickle.BUILD[0]] = load_build

    # Container opcodes look up append/extend/add on the target object; only let them
    # touch real containers so no attribute planted by the file is ever called.
    def load_append(self):
        value = self.stack.pop()
        target = self.stack[-1]
        if type(target) is not list:
            raise UnsafeCheckpointError(f"APPEND to a {type(target).__name__}")
        target.append(value)

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not list:
            raise UnsafeCheckpointError(f"APPENDS to a {type(target).__name__}")
        target.extend(items)

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise UnsafeCheckpointError(f"ADDITEMS to a {type(target).__name__}")
        target.update(items)

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        target = self.stack[-1]
        if type(target) not in (dict, collections.OrderedDict):
            raise UnsafeCheckpointError(f"SETITEM on a {type(target).__name__}")
        target[key] = value

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) not in (dict, collections.OrderedDict):
            raise UnsafeCheckpointError(f"SETITEMS on a {type(target).__name__}")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    dispatch[pickle.SETITEMS[0]] = load_setitems


def restricted_loads(data: bytes, persistent_load=None):
    """Unpickle ``data`` with the restricted rules (for plain pickles and tests)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), persistent_load).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            IndexError, AttributeError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"malformed pickle: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------
# The zip archive


class TorchArchive:
    """A ``torch.save`` zip file: ``<prefix>/data.pkl`` plus ``<prefix>/data/<key>``."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise CheckpointError(
                f"{os.path.basename(path)} is not a torch zip archive (legacy torch.save "
                "format or not a checkpoint)"
            ) from None
        names = self.zip.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{os.path.basename(path)}: expected one <name>/data.pkl")
        self.prefix = pkls[0][: -len("data.pkl")]
        self.infos = {i.filename: i for i in self.zip.infolist()}
        bo = self.infos.get(self.prefix + "byteorder")
        self.big_endian = bo is not None and self.zip.read(bo).strip() == b"big"
        self._mmap = None
        self.storages: Dict[str, Storage] = {}

    def _file_mmap(self) -> np.ndarray:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mmap

    def storage_bytes(self, key: str) -> np.ndarray:
        info = self.infos.get(f"{self.prefix}data/{key}")
        if info is None:
            raise CheckpointError(f"storage {key!r} missing from the archive")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size > 0:
            mm = self._file_mmap()
            hdr = bytes(mm[info.header_offset : info.header_offset + 30])
            if hdr[:4] != b"PK\x03\x04":
                raise CheckpointError(f"bad zip local header for storage {key!r}")
            name_len, extra_len = struct.unpack("<HH", hdr[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            return mm[start : start + info.file_size]
        return np.frombuffer(self.zip.read(info), dtype=np.uint8)

    def _persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, StorageType):
            raise UnsafeCheckpointError(f"persistent id with storage type {stype!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise UnsafeCheckpointError("malformed storage persistent id")
        st = self.storages.get(key)
        if st is None:
            st = Storage(self, key, stype, numel)
            self.storages[key] = st
        return st

    def load(self):
        data = self.zip.read(self.prefix + "data.pkl")
        return restricted_loads(data, self._persistent_load)


def load_torch_file(path: str):
    """Read a ``torch.save`` zip archive without executing any code from it."""
    return TorchArchive(path).load()
