"""The one place that knows which networks a `model:` value means."""
from __future__ import annotations

import torch

from gmnr.config import Params


def camera_label(cam2world: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """The discriminator's camera label [B, 16]: the flattened 4x4 world-to-camera matrix with the
    world expressed in ``frame`` (cam2world [4, 4]). GMPI's world frame is its canonical camera's
    (``gmpi/train.py``: ``torch.inverse(c2w).reshape(B, -1)`` with the canonical camera at the
    origin), so its label is ``inv(inv(frame) @ cam2world) = inv(cam2world) @ frame``."""
    return (torch.linalg.inv(cam2world.reshape(-1, 4, 4)) @ frame.to(cam2world).reshape(4, 4)).reshape(-1, 16)


# The FFHQ StyleGAN2 generator (NVlabs config "stylegan2", GMPI's configs/gmpi.yml): what a gmpi
# architecture key means when it is null and no pretrained file says otherwise.
PUBLISHED_ARCHITECTURE = {"z_dim": 512, "w_dim": 512, "mapping_layers": 8, "channel_base": 32768,
                          "channel_max": 512, "conv_clamp": None}
SHAPE_KEYS = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")  # conv_clamp changes no shape


def resolve_architecture(params: Params, progress: bool = False) -> Params:
    """``params`` with every null ``gmpi`` architecture key filled: from ``gmpi.pretrained``'s own
    config when the model starts from one (so the FFHQ-256 pickle builds its paper256 network),
    else the published FFHQ values. A key set in params that disagrees with the file's shape
    raises, naming it, before anything is built or loaded."""
    from pathlib import Path

    from gmnr.config import ParamsError
    g = params.gmpi
    found: dict = {}
    if g.pretrained and params.model in ("gmpi", "gmnr", "stylegan2"):
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


def _architecture(params: Params) -> dict:
    """The gmpi architecture keys of ``params``; null ones are the published values, which is only
    right without a pretrained file (with one, :func:`resolve_architecture` must run first)."""
    g = params.gmpi
    missing = [k for k in SHAPE_KEYS if getattr(g, k) is None]
    if missing and g.pretrained:
        raise ValueError(f"gmpi.{', gmpi.'.join(missing)} are null: the architecture of {g.pretrained} has not been "
                         f"resolved (gmnr.models.factory.resolve_architecture)")
    return {k: PUBLISHED_ARCHITECTURE[k] if getattr(g, k) is None else getattr(g, k) for k in PUBLISHED_ARCHITECTURE}


def _gmpi_fields(params: Params) -> dict:
    cam, g = params.camera(), params.gmpi
    return dict(resolution=params.training_resolution(), **_architecture(params),
                planes_train=g.planes_train, planes_eval=g.planes_eval,
                alpha_max_res=g.alpha_max_res, fov_deg=cam.fov_deg, radius=cam.radius, center=tuple(cam.center),
                depth_range=tuple(cam.depth_range), yaw_max=cam.truncation * cam.yaw_std,
                pitch_max=cam.truncation * cam.pitch_std)


def _mvcgan_fields(params: Params) -> dict:
    from gmnr.train.curriculum import curriculum_from_params
    cam, m = params.model_camera(), params.mvcgan  # MVCGAN's own camera, not the dataset's GMPI camera
    stages = curriculum_from_params(params).stages
    rays = [s.ray_resolution for s in stages]
    # The largest output is the curriculum's last usable stage (<= the packed resolution): no decoder
    # widths are needed for resolutions training never reaches.
    return dict(resolution=max(s.resolution for s in stages), ray_resolution=rays[-1], min_ray_resolution=min(rays),
                z_dim=m.z_dim, w_dim=m.w_dim, mapping_layers=m.mapping_layers, siren_layers=m.siren_layers,
                siren_hidden=m.siren_hidden, freq_scale=m.freq_scale, freq_bias=m.freq_bias, box_side=m.box_side,
                samples_per_ray=m.samples_per_ray, decoder_channels=tuple(m.decoder_channels),
                fov_deg=cam.fov_deg, center=tuple(cam.center), ray_range=tuple(cam.depth_range))


def build_generator(params: Params) -> torch.nn.Module:
    if params.model == "stylegan2":
        from gmnr.models.backbone import StyleGAN2Backbone
        from gmnr.models.gmpi import GMPIConfig
        return StyleGAN2Backbone(GMPIConfig(**_gmpi_fields(params)))
    if params.model == "gmpi":
        from gmnr.models.gmpi import GMPIConfig, GMPIGenerator
        return GMPIGenerator(GMPIConfig(**_gmpi_fields(params)))
    if params.model == "gmnr":
        from gmnr.models.gmnr import GMNRConfig, GMNRGenerator
        n = params.gmnr
        return GMNRGenerator(GMNRConfig(
            **_gmpi_fields(params), vdr_enabled=n.vdr, vdr_fraction=n.vdr_fraction, vdr_threshold=n.vdr_threshold,
            vdr_pos_freqs=n.pos_freqs, vdr_depth_freqs=n.depth_freqs, vdr_dir_freqs=tuple(n.dir_freqs),
            vdr_k_hidden=n.k_hidden, vdr_k_layers=n.k_layers, vdr_h_hidden=n.h_hidden, vdr_h_layers=n.h_layers,
            vdr_zero_init=n.zero_init))
    if params.model == "mvcgan":
        from gmnr.models.mvcgan import MVCGANConfig, MVCGANGenerator
        return MVCGANGenerator(MVCGANConfig(**_mvcgan_fields(params)))
    raise ValueError(f"model '{params.model}' has no generator in this version")


def build_discriminator(params: Params) -> torch.nn.Module:
    if params.model == "mvcgan":
        from gmnr.models.mvcgan_discriminator import PoseDiscriminator
        m = params.mvcgan
        return PoseDiscriminator(params.training_resolution(), m.d_channel_base, m.d_channel_min, m.d_channel_max)
    from gmnr.models.stylegan2 import Discriminator
    g, arch = params.gmpi, _architecture(params)
    # GMPI and GMNR condition on the camera (flattened world-to-camera matrix); a 2D StyleGAN2 does not
    c_dim = 0 if params.model == "stylegan2" else 16
    return Discriminator(c_dim=c_dim, img_resolution=params.training_resolution(), channel_base=arch["channel_base"],
                         channel_max=arch["channel_max"], conv_clamp=arch["conv_clamp"], cmap_dim=g.d_cmap_dim,
                         epilogue_kwargs={"mbstd_group_size": g.mbstd_group_size})


def set_inference_vdr(G: torch.nn.Module, mode: str) -> torch.nn.Module:
    """GMNR's view-dependent colour at inference (``all`` | ``sampled`` | ``off``); other models have none."""
    if hasattr(G, "set_inference_vdr"):
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
