"""Unpickle NVlabs stylegan2-ada-pytorch `.pkl` checkpoints without executing code from them.

Why: the NVlabs `.pkl` files are ordinary pickles of a dict ``{'G', 'D', 'G_ema',
'training_set_kwargs', 'augment_pipe'}`` whose networks are reduced through
``torch_utils.persistence._reconstruct_persistent_obj(meta)``. With the stock unpickler that
function *compiles and executes* ``meta['module_src']`` -- Python source stored in the file.
Loading a downloaded checkpoint that way runs arbitrary code. Here a restricted unpickler resolves
only an explicit allow-list of data constructors (tensors, storages, ordered dicts, numpy scalars,
EasyDict) and replaces the persistence hook with :func:`_safe_reconstruct_persistent_obj`, which
keeps the class name and the module's state (`_parameters`, `_buffers`, `_modules`, attributes)
as plain data and never looks at the source beyond hashing it. Every other global
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, unknown classes) raises
:class:`UnsafePickleError` naming the module and attribute. Nothing here imports a module a
pickle names: :meth:`RestrictedUnpickler.find_class` only looks names up in
:data:`ALLOWED_GLOBALS`.

This module only turns bytes into plain data (:class:`PersistentObject` trees of tensors);
copying those weights into a network is :mod:`gmnr.models.pretrained`'s job. gmnr's own ``.pt``
files never come here: they are read with ``torch.load(weights_only=True)``
(:mod:`gmnr.train.checkpoint`).
"""
from __future__ import annotations

import _compat_pickle
import hashlib
import io
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Mapping

import torch
from torch import nn

__all__ = ["UnsafePickleError", "PersistentObject", "EasyDict", "ALLOWED_GLOBALS", "RestrictedUnpickler",
           "safe_load_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list; nothing from it was executed."""


# ---------------------------------------------------------------------------------------------
# Plain-data stand-ins for the objects of the NVlabs pickles.

@dataclass
class PersistentObject:
    """What an NVlabs persistent network becomes here: its class name and pickled state as data.

    `module_src_sha256` identifies the source that the file carries (useful to tell checkpoints
    from different code versions apart) without keeping or running it.
    """
    class_name: str
    version: Any
    module_src_sha256: str
    state: dict = field(repr=False)

    @property
    def parameters(self) -> Mapping[str, torch.Tensor | None]:
        return self.state.get("_parameters") or {}

    @property
    def buffers(self) -> Mapping[str, torch.Tensor | None]:
        return self.state.get("_buffers") or {}

    @property
    def modules(self) -> Mapping[str, Any]:
        return self.state.get("_modules") or {}


class EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict` (a dict with attribute access) so that
    `training_set_kwargs` and the networks' `_init_kwargs` unpickle without importing dnnlib."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


class _TypeMarker:
    """Names a tensor class in `_rebuild_from_type_v2` without handing the pickle a callable."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<tensor type {self.name}>"


_TENSOR_TYPE = _TypeMarker("torch.Tensor")
_PARAMETER_TYPE = _TypeMarker("torch.nn.Parameter")


def _safe_reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """Replacement for `torch_utils.persistence._reconstruct_persistent_obj`: records the state,
    never compiles `module_src`."""
    if not isinstance(meta, dict):
        raise UnsafePickleError(f"persistent object metadata must be a dict, got {type(meta).__name__}")
    if meta.get("type") != "class":
        raise UnsafePickleError(f"unsupported persistent object type {meta.get('type')!r} (expected 'class')")
    class_name = meta.get("class_name")
    if not isinstance(class_name, str):
        raise UnsafePickleError(f"persistent object class_name must be a str, got {type(class_name).__name__}")
    src = meta.get("module_src", "")
    src_bytes = src.encode("utf-8") if isinstance(src, str) else bytes(src or b"")
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise UnsafePickleError(f"state of persistent {class_name} must be a dict, got {type(state).__name__}")
    return PersistentObject(class_name=class_name, version=meta.get("version"),
                            module_src_sha256=hashlib.sha256(src_bytes).hexdigest(), state=dict(state))


# ---------------------------------------------------------------------------------------------
# Safe equivalents of the reconstruction functions a tensor pickle names.

def _require_no_hooks(hooks: Any, what: str) -> None:
    if hooks:
        raise UnsafePickleError(f"{what} carries backward hooks; refusing (hooks are code)")


def _check_storage(storage: Any) -> None:
    if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
        raise UnsafePickleError(f"tensor storage must be a torch storage, got {type(storage).__name__}")


def _rebuild_tensor(storage, storage_offset, size, stride):
    _check_storage(storage)
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    _require_no_hooks(backward_hooks, "tensor")
    del metadata  # Only carries Python-level tensor attributes, which we do not need.
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    tensor.requires_grad = bool(requires_grad)
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    _require_no_hooks(backward_hooks, "parameter")
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"parameter data must be a tensor, got {type(data).__name__}")
    return nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks=None, state=None):
    del state  # Python attributes attached to the parameter object; not needed for weights.
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state):
        raise UnsafePickleError(f"_rebuild_from_type_v2 with a non-tensor constructor {func!r}")
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        raise UnsafePickleError(f"_rebuild_from_type_v2 with unsupported type {new_type!r}")
    del state
    tensor = func(*args)
    if new_type is _PARAMETER_TYPE and not isinstance(tensor, nn.Parameter):
        tensor = nn.Parameter(tensor, requires_grad=tensor.requires_grad)
    return tensor


def _load_storage_from_bytes(data: bytes):
    """`torch.storage._load_from_bytes` (a legacy `torch.save` blob of one storage) loaded with
    torch's own weights-only unpickler, mapped to CPU so CUDA-saved checkpoints load anywhere."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f"storage payload must be bytes, got {type(data).__name__}")
    return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")


def _codecs_encode(obj: Any, encoding: str = "latin1"):
    """Protocol-2 pickles spell bytes as `_codecs.encode(str, 'latin1')`; allow only that."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only allowed as the protocol-2 bytes idiom")
    return obj.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy scalars (the NVlabs layers store gains such as `weight_gain` as np.float64) and plain
    arrays, rebuilt through checked wrappers. Empty if numpy is not installed."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch here
        return {}
    ndarray_marker = _TypeMarker("numpy.ndarray")

    def dtype(spec, align=False, copy=True):
        if not isinstance(spec, str):
            raise UnsafePickleError(f"numpy dtype spec must be a str, got {type(spec).__name__}")
        return np.dtype(spec, bool(align), True)  # Always a copy: BUILD mutates it.

    def scalar(dt, data=None):
        if not isinstance(dt, np.dtype) or dt.hasobject or not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError("numpy scalar must be a plain dtype with a bytes payload")
        if len(data) != dt.itemsize:
            raise UnsafePickleError(f"numpy scalar payload has {len(data)} bytes, dtype needs {dt.itemsize}")
        return np.frombuffer(bytes(data), dtype=dt)[0]

    def reconstruct(subtype, shape, dtype_code):
        if subtype is not ndarray_marker:
            raise UnsafePickleError(f"numpy _reconstruct of {subtype!r}; only numpy.ndarray is allowed")
        return np.ndarray((0,), dtype=np.uint8)  # Shape, dtype and data arrive via BUILD/__setstate__.

    def frombuffer(buffer, dt, shape, order):  # protocol-5 spelling of a contiguous array
        if not isinstance(dt, np.dtype) or dt.hasobject or order not in ("C", "F"):
            raise UnsafePickleError("numpy _frombuffer needs a plain dtype and C/F order")
        return np.frombuffer(bytes(buffer), dtype=dt).reshape(tuple(shape), order=order).copy()

    out: dict[tuple[str, str], Any] = {("numpy", "dtype"): dtype, ("numpy", "ndarray"): ndarray_marker}
    for pkg in ("numpy.core", "numpy._core"):
        out[(f"{pkg}.multiarray", "scalar")] = scalar
        out[(f"{pkg}.multiarray", "_reconstruct")] = reconstruct
        out[(f"{pkg}.numeric", "_frombuffer")] = frombuffer
    return out


_STORAGE_NAMES = ("FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
                  "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage")
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


def _build_allow_list() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): _codecs_encode,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch._tensor", "Tensor"): _TENSOR_TYPE,
        ("torch", "Tensor"): _TENSOR_TYPE,
        ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _safe_reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
    }
    for name in _STORAGE_NAMES:
        if hasattr(torch, name):
            allowed[("torch", name)] = getattr(torch, name)
    for name in _DTYPE_NAMES:
        allowed[("torch", name)] = getattr(torch, name)
    allowed.update(_numpy_globals())
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _build_allow_list()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only from :data:`ALLOWED_GLOBALS` (never imports)."""

    def __init__(self, file: BinaryIO, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 spellings (protocol < 3 pickles, e.g. '__builtin__.set') are translated as the
        # stock unpickler would; they never collide with Python-3 module names.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing global '{module}.{name}': not in the allow-list of data-only "
                "constructors (nothing from this file was executed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: persistent ids are not part of the NVlabs format ({pid!r})")


def safe_load_pickle(source: str | os.PathLike | BinaryIO) -> Any:
    """Unpickle a file (path or binary file object) through :class:`RestrictedUnpickler`."""
    if hasattr(source, "read"):
        return RestrictedUnpickler(source, getattr(source, "name", "<stream>")).load()
    with open(source, "rb") as f:
        return RestrictedUnpickler(f, os.fspath(source)).load()
