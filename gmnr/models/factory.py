"""Networks from params: the registry's spec of ``model`` builds them (gmnr.models.registry); loading a
trained generator back."""
from __future__ import annotations

import torch

from gmnr.config import Params


def camera_label(cam2world: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """The discriminator's camera label [B, 16]: the flattened 4x4 world-to-camera matrix with the
    world expressed in ``frame`` (cam2world [4, 4]). GMPI's world frame is its canonical camera's
    (``gmpi/train.py``: ``torch.inverse(c2w).reshape(B, -1)`` with the canonical camera at the
    origin), so its label is ``inv(inv(frame) @ cam2world) = inv(cam2world) @ frame``."""
    return (torch.linalg.inv(cam2world.reshape(-1, 4, 4)) @ frame.to(cam2world).reshape(4, 4)).reshape(-1, 16)


def resolve_architecture(params: Params, progress: bool = False) -> Params:
    """``params`` with every null ``gmpi`` architecture key filled: from ``gmpi.pretrained``'s own
    config when the model starts from one (so the FFHQ-256 pickle builds its paper256 network),
    else the published FFHQ values. A key set in params that disagrees with the file's shape
    raises, naming it, before anything is built or loaded."""
    from pathlib import Path

    from gmnr.config import ParamsError
    from gmnr.models.registry import get
    from gmnr.models.specs.gmpi import PUBLISHED_ARCHITECTURE, SHAPE_KEYS
    g = params.gmpi
    found: dict = {}
    if g.pretrained and get(params.model).reads("gmpi"):
        from gmnr.data.download import resolve_weights
        from gmnr.models.pretrained import architecture_of
        path = resolve_weights(g.pretrained, Path(params.paths.downloads) / "weights", progress)
        found = architecture_of(path)
        clash = [f"gmpi.{k}: {getattr(g, k)} in params, {found[k]} in {path}" for k in SHAPE_KEYS
                 if k in found and getattr(g, k) is not None and getattr(g, k) != found[k]]
        if clash:
            raise ParamsError("the pretrained weights fix the architecture: " + "; ".join(clash)
                              + " (set these keys to null to follow the file)")
    filled = {k: found.get(k, PUBLISHED_ARCHITECTURE[k]) for k in PUBLISHED_ARCHITECTURE if getattr(g, k) is None}
    return params.model_copy(update={"gmpi": g.model_copy(update=filled)}) if filled else params


def build_generator(params: Params) -> torch.nn.Module:
    """``params.model``'s generator (its spec's builder), at its seeded initialisation by the caller."""
    from gmnr.models.registry import get
    return get(params.model).build_generator(params)


def build_discriminator(params: Params) -> torch.nn.Module:
    from gmnr.models.registry import get
    return get(params.model).build_discriminator(params)


def set_inference_vdr(G: torch.nn.Module, mode: str) -> torch.nn.Module:
    """GMNR's view-dependent colour at inference (``all`` | ``sampled`` | ``off``); other models have none."""
    from gmnr.models.registry import ViewDependentColour
    if isinstance(G, ViewDependentColour):
        G.set_inference_vdr(mode)
    return G


def load_generator(path, device: torch.device | str = "cpu", inference_vdr: str = "all"
                   ) -> tuple[torch.nn.Module, Params, dict]:
    """The EMA generator of a ``final.pt`` (or of a training checkpoint), in eval mode, with the
    params it was trained with. Loaded with ``weights_only=True``: no code from the file runs.
    ``inference_vdr``: see :func:`set_inference_vdr`."""
    from gmnr.train.checkpoint import load_with_params
    params, state = load_with_params(path, device, needs=("G_ema", "config"), kind="generator checkpoint")
    G = build_generator(params).to(device)
    G.load_state_dict(state["G_ema"])
    return set_inference_vdr(G, inference_vdr).eval().requires_grad_(False), params, state
