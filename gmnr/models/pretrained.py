"""Load NVlabs stylegan2-ada-pytorch `.pkl` checkpoints without executing code from them.

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
:class:`UnsafePickleError` naming the module and attribute.

The weights are then flattened to dotted names (``synthesis.b8.conv0.weight``) that match
:mod:`gmnr.models.stylegan2` one-to-one, and :func:`load_into` copies them shape-checked,
reporting (never silently dropping) missing, unexpected and mismatched keys.
"""
from __future__ import annotations

import _compat_pickle
import hashlib
import io
import logging
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Mapping

import torch
from torch import nn

__all__ = [
    "UnsafePickleError", "PersistentObject", "RestrictedUnpickler", "safe_load_pickle", "flatten_state",
    "load_network_state", "LoadReport", "load_into", "init_generator_from_pkl", "pretrained_states",
    "init_from_pretrained", "export_weights", "ARCHITECTURE_KEYS", "architecture_of",
]

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------
# Flattening and copying.

def flatten_state(obj: PersistentObject, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """Dotted-name tensors of a persistent module tree, like `nn.Module.state_dict()`:
    parameters and persistent buffers, recursing through `_modules`."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    _flatten_into(obj, prefix, out)
    return out


def _flatten_into(obj: PersistentObject, prefix: str, out: dict) -> None:
    non_persistent = set(obj.state.get("_non_persistent_buffers_set") or ())
    for kind, tensors in (("parameter", obj.parameters), ("buffer", obj.buffers)):
        for name, tensor in tensors.items():
            if tensor is None or (kind == "buffer" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{prefix}{name}: {kind} is a {type(tensor).__name__}, not a tensor")
            out[prefix + name] = tensor.detach()
    for name, child in obj.modules.items():
        if child is None:
            continue
        if not isinstance(child, PersistentObject):
            raise ValueError(f"{prefix}{name}: submodule is a {type(child).__name__}, not a persistent module")
        _flatten_into(child, f"{prefix}{name}.", out)


def load_network_state(pkl_path: str | os.PathLike, key: str = "G_ema") -> "OrderedDict[str, torch.Tensor]":
    """Flattened weights of network `key` ('G_ema', 'G' or 'D') of an NVlabs `.pkl`."""
    data = safe_load_pickle(pkl_path)
    if not isinstance(data, dict):
        raise ValueError(f"{pkl_path}: expected a dict of networks, got {type(data).__name__}")
    if key not in data:
        raise KeyError(f"{pkl_path}: no network {key!r}; available keys: {sorted(map(str, data))}")
    net = data[key]
    if not isinstance(net, PersistentObject):
        raise ValueError(f"{pkl_path}: {key!r} is a {type(net).__name__}, not a persistent network")
    return flatten_state(net)


class LoadReport(dict):
    """Outcome of :func:`load_into`; `ok` only when every key matched in name and shape.

    A dict (keys loaded / missing / unexpected / mismatched) so it can be logged as a JSON
    artefact as is, with attribute access for code. `mismatched` holds
    (key, checkpoint shape, model shape) tuples.
    """

    def __init__(self, loaded=None, missing=None, unexpected=None, mismatched=None):
        super().__init__(loaded=list(loaded or []), missing=list(missing or []),
                         unexpected=list(unexpected or []), mismatched=list(mismatched or []))

    loaded = property(lambda self: self["loaded"])
    missing = property(lambda self: self["missing"])
    unexpected = property(lambda self: self["unexpected"])
    mismatched = property(lambda self: self["mismatched"])

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        def head(items):
            items = [str(i) for i in items]
            return ", ".join(items[:limit]) + (f", ... (+{len(items) - limit})" if len(items) > limit else "")
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"missing in checkpoint ({len(self.missing)}): {head(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in checkpoint ({len(self.unexpected)}): {head(self.unexpected)}")
        if self.mismatched:
            lines.append(f"shape mismatch ({len(self.mismatched)}): "
                         + head(f"{k} ckpt {list(a)} vs model {list(b)}" for k, a, b in self.mismatched))
        return "; ".join(lines)


def _rename(key: str, prefix_map: Mapping[str, str] | None) -> str:
    """Replace the longest matching source prefix (e.g. {'synthesis.': 'backbone.synthesis.'})."""
    if not prefix_map:
        return key
    for src in sorted(prefix_map, key=len, reverse=True):
        if key.startswith(src):
            return prefix_map[src] + key[len(src):]
    return key


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], prefix_map: Mapping[str, str] | None = None,
              strict: bool = False, dry_run: bool = False) -> LoadReport:
    """Copy `state` into `module`'s parameters and buffers where names and shapes agree.

    Keys of `state` are renamed with `prefix_map` first. Everything that does not match is listed
    in the returned report and logged as a warning; with `strict=True` any mismatch raises
    instead (after nothing has been copied). `dry_run` only builds the report.
    """
    targets = module.state_dict(keep_vars=True)
    report = LoadReport()
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[str] = set()
    for src_key, tensor in state.items():
        key = _rename(src_key, prefix_map)
        if key not in targets:
            report.unexpected.append(key)
            continue
        seen.add(key)
        target = targets[key]
        if tuple(target.shape) != tuple(tensor.shape):
            report.mismatched.append((key, tuple(tensor.shape), tuple(target.shape)))
            continue
        pending.append((target, tensor))
        report.loaded.append(key)
    report.missing.extend(k for k in targets if k not in seen)

    if strict and not report.ok:
        raise ValueError(f"checkpoint does not match {type(module).__name__}: {report.summary()}")
    if dry_run:
        return report
    with torch.no_grad():
        for target, tensor in pending:
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    if report.ok:
        log.info("loaded %d tensors into %s", len(report.loaded), type(module).__name__)
    else:
        log.warning("partial load into %s: %s", type(module).__name__, report.summary())
    return report


def init_generator_from_pkl(generator: nn.Module, pkl_path: str | os.PathLike, key: str = "G_ema",
                            prefix_map: Mapping[str, str] | None = None, strict: bool = False) -> LoadReport:
    """Initialise our StyleGAN2 `Generator` (or a module embedding it, via `prefix_map`) from the
    `key` network of an NVlabs `.pkl`, returning the load report."""
    return load_into(generator, load_network_state(pkl_path, key=key), prefix_map=prefix_map, strict=strict)



def pretrained_states(path: str | os.PathLike) -> dict[str, "Mapping[str, torch.Tensor]"]:
    """The generator ("G_ema") and discriminator ("D", when present) weights of a pretrained file:
    an NVlabs ``.pkl`` (restricted unpickler) or a gmnr ``.pt`` (``torch.load(weights_only=True)``:
    a training checkpoint, a ``final.pt`` or an exported weights file). Nothing in either runs code."""
    path = os.fspath(path)
    if path.endswith(".pkl"):
        data = safe_load_pickle(path)
        if not isinstance(data, dict) or "G_ema" not in data:
            raise ValueError(f"{path}: not an NVlabs checkpoint (expected a dict with 'G_ema')")
        return {key: flatten_state(data[key]) for key in ("G_ema", "D") if isinstance(data.get(key), PersistentObject)}
    from gmnr.train.checkpoint import load_checkpoint
    state = load_checkpoint(path)
    if "G_ema" not in state:
        raise ValueError(f"{path}: no 'G_ema' weights (expected a gmnr checkpoint, final.pt or exported weights)")
    return {key: state[key] for key in ("G_ema", "D") if isinstance(state.get(key), Mapping)}


# A camera-conditioned discriminator ends in a projection head (cmap_dim outputs) where an
# unconditional one has a single logit.
_D_HEAD = ("b4.out.weight", "b4.out.bias")


def _expand_logit_head(d_state: Mapping[str, torch.Tensor], discriminator: nn.Module) -> dict[str, torch.Tensor]:
    """An unconditional D's single logit row copied into each of a conditioned D's cmap_dim
    projection rows, as GMPI's ``copy_params_and_buffers`` does (its ``tensor.copy_`` broadcasts
    the [1, C] row over [16, C]). With :class:`gmnr.models.stylegan2.LabelProjection`'s initial
    embedding the conditioned D then gives the unconditional D's logits for every camera."""
    targets = discriminator.state_dict()
    out = dict(d_state)
    for key in _D_HEAD:
        src, dst = out.get(key), targets.get(key)
        if src is not None and dst is not None and src.shape[0] == 1 and dst.shape[0] > 1 \
                and tuple(src.shape[1:]) == tuple(dst.shape[1:]):
            out[key] = src.expand_as(dst).clone()
    return out


def init_from_pretrained(generator: nn.Module, discriminator: nn.Module | None, path: str | os.PathLike) -> dict:
    """Initialise a GMPI / GMNR / 2D-StyleGAN2 generator and its discriminator from ``path``.

    Names that both sides share are copied; an unconditional D's logit row fills every row of a
    camera-conditioned D's projection head (:func:`_expand_logit_head`). What a 2D StyleGAN2 has no
    counterpart for keeps its initialisation and is reported: GMPI's alpha branch, GMNR's
    alpha-VdR, a camera-conditioned discriminator's label projection. Any other disagreement (a tensor of another
    shape, a name the model lacks) means the file was trained for another architecture: that
    raises, naming the tensors, before anything is copied. Returns the load reports
    (``{"source", "G": ..., "D": ...}``), which the trainer logs to MLflow.
    """
    states = pretrained_states(path)
    if not states.get("G_ema"):
        raise ValueError(f"{path}: holds no generator weights ('G_ema' is missing or empty); refusing to start "
                         f"from it (training would silently start from scratch)")
    g_report = load_into(generator, states["G_ema"], dry_run=True)
    problems = [f"{k}: {list(a)} in the file, {list(b)} here" for k, a, b in g_report.mismatched]
    problems += [f"{k}: not in the model" for k in g_report.unexpected]
    d_report = d_state = None
    if discriminator is not None and "D" in states:
        d_state = _expand_logit_head(states["D"], discriminator)
        d_report = load_into(discriminator, d_state, dry_run=True)
    if d_report is not None:
        problems += [f"D {k}: {list(a)} in the file, {list(b)} here" for k, a, b in d_report.mismatched]
        problems += [f"D {k}: not in the model" for k in d_report.unexpected]
    if problems:
        more = f"; ... (+{len(problems) - 6})" if len(problems) > 6 else ""
        raise ValueError(f"{path} was trained for another architecture than these params describe "
                         f"(gmpi.z_dim, w_dim, mapping_layers, channel_base, channel_max and the resolution must "
                         f"match it): " + "; ".join(problems[:6]) + more)
    if not g_report.loaded:
        raise ValueError(f"{path}: none of its {len(states['G_ema'])} generator tensors matches this model; refusing "
                         f"to start from it (training would silently start from scratch)")
    report = {"source": os.fspath(path), "G": load_into(generator, states["G_ema"])}
    if discriminator is not None:
        if d_report is not None:
            report["D"] = load_into(discriminator, d_state)
        else:
            report["D"] = "not in the file: the discriminator starts from scratch"
            log.warning("%s has no discriminator weights; D starts from scratch", path)
    return report


# The generator architecture a pretrained file fixes (GMPI's params.gmpi keys); None where the file is silent.
ARCHITECTURE_KEYS = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "conv_clamp")


def _kwargs(obj: Any) -> dict:
    """A persistent network's constructor kwargs (NVlabs' persistence keeps ``_init_kwargs``)."""
    kwargs = obj.state.get("_init_kwargs") if isinstance(obj, PersistentObject) else None
    return dict(kwargs) if isinstance(kwargs, Mapping) else {}


def architecture_of(path: str | os.PathLike) -> dict[str, Any]:
    """The generator architecture of a pretrained file, as ``params.gmpi`` keys.

    An NVlabs ``.pkl`` keeps each network's constructor kwargs (``G_ema._init_kwargs``: z_dim,
    w_dim, ``mapping_kwargs.num_layers``, ``synthesis_kwargs.channel_base / channel_max /
    conv_clamp``): FFHQ-256 is the paper256 network (channel_base 16384), the others 32768, which
    GMPI's code derives from its ``fmaps`` table (``train.py``, ``train_helpers.py``). A gmnr ``.pt``
    keeps the params it was trained with. Keys the file does not state are left out."""
    path = os.fspath(path)
    if path.endswith(".pkl"):
        data = safe_load_pickle(path)
        g = _kwargs(data.get("G_ema")) if isinstance(data, dict) else {}
        mapping, synthesis = dict(g.get("mapping_kwargs") or {}), dict(g.get("synthesis_kwargs") or {})
        found = {"z_dim": g.get("z_dim"), "w_dim": g.get("w_dim"), "mapping_layers": mapping.get("num_layers"),
                 "channel_base": synthesis.get("channel_base"), "channel_max": synthesis.get("channel_max")}
        if "conv_clamp" in synthesis:
            found["conv_clamp"] = synthesis["conv_clamp"]
        return {k: v for k, v in found.items() if v is not None or k == "conv_clamp"}
    from gmnr.train.checkpoint import load_checkpoint
    config = load_checkpoint(path).get("config") or {}
    section = config.get("gmpi") if isinstance(config, Mapping) else None
    return {k: section[k] for k in ARCHITECTURE_KEYS if isinstance(section, Mapping) and k in section}


def export_weights(checkpoint: str | os.PathLike, output: str | os.PathLike, dtype: str = "float16") -> dict:
    """Write the G_ema and D weights of a gmnr checkpoint (or final.pt) to ``output``, the file
    that ``gmpi.pretrained`` (a path, or a registry entry bundling it) starts a run from.

    ``float16`` halves the file (a bundled demo backbone stays under 2 MB); loading casts back to
    the model's float32. Floating-point tensors are cast, integer buffers kept. Written through a
    temporary file and renamed. Returns the output path, its SHA-256 and size for the registry.
    """
    from gmnr.train.checkpoint import load_checkpoint
    cast = {"float16": torch.float16, "float32": torch.float32}
    if dtype not in cast:
        raise ValueError(f"dtype must be one of {sorted(cast)}, got {dtype!r}")
    state = load_checkpoint(checkpoint)
    if "G_ema" not in state or "D" not in state:
        raise ValueError(f"{checkpoint}: needs 'G_ema' and 'D' weights (a training checkpoint or a final.pt "
                         f"written by this version)")

    def convert(weights: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((k, v.to(cast[dtype]) if v.is_floating_point() else v) for k, v in weights.items())
    payload = {"G_ema": convert(state["G_ema"]), "D": convert(state["D"]), "config": state.get("config"),
               "model": state.get("model"), "step": state.get("step"), "dtype": dtype,
               "source_sha256": hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()}
    output = os.fspath(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = f"{output}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:  # a file object: the archive's inner name does not depend on tmp's name
        torch.save(payload, f)
    os.replace(tmp, output)
    data = open(output, "rb").read()
    return {"output": output, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
            "parameters": sum(v.numel() for part in ("G_ema", "D") for v in payload[part].values()),
            "step": payload["step"], "model": payload["model"]}
