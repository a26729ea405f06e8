"""Start a network from pretrained StyleGAN2 weights: NVlabs `.pkl` checkpoints and gmnr files.

The NVlabs weights are read as plain data by the restricted unpickler of
:mod:`gmnr.models.safe_pickle` (nothing in a `.pkl` is executed), gmnr's own `.pt` files with
``torch.load(weights_only=True)``. Either way the weights are then flattened to dotted names
(``synthesis.b8.conv0.weight``) that match :mod:`gmnr.models.stylegan2` one-to-one, and
:func:`load_into` copies them shape-checked, reporting (never silently dropping) missing,
unexpected and mismatched keys. :func:`export_weights` writes the other direction: a trained
run's G_ema and D as a file that ``gmpi.pretrained`` can start from.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn

# The unpickler's names are re-exported: callers import them from here as well as from safe_pickle.
from gmnr.models.safe_pickle import PersistentObject, RestrictedUnpickler, UnsafePickleError, safe_load_pickle

__all__ = [
    "UnsafePickleError", "PersistentObject", "RestrictedUnpickler", "safe_load_pickle", "flatten_state",
    "load_network_state", "LoadReport", "load_into", "init_generator_from_pkl", "pretrained_states",
    "init_from_pretrained", "export_weights", "ARCHITECTURE_KEYS", "architecture_of",
]

log = logging.getLogger(__name__)


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
    from pathlib import Path

    from gmnr.io import atomic_write

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: the archive's inner name does not depend on tmp's name
            torch.save(payload, f)
    output = os.fspath(atomic_write(Path(output), save, tmp_name=f"{Path(output).name}.tmp-{os.getpid()}"))
    data = open(output, "rb").read()
    return {"output": output, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
            "parameters": sum(v.numel() for part in ("G_ema", "D") for v in payload[part].values()),
            "step": payload["step"], "model": payload["model"]}
