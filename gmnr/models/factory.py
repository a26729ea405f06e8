"""The one place that knows which networks a `model:` value means."""
from __future__ import annotations

import torch

from gmnr.config import Params


def world2cam_label(cam2world: torch.Tensor) -> torch.Tensor:
    """The discriminator's camera label: the flattened 4x4 world-to-camera matrix [B, 16]."""
    return torch.linalg.inv(cam2world.reshape(-1, 4, 4)).reshape(-1, 16)


def _gmpi_fields(params: Params) -> dict:
    cam, g = params.camera(), params.gmpi
    return dict(resolution=params.training_resolution(), z_dim=g.z_dim, w_dim=g.w_dim,
                mapping_layers=g.mapping_layers, channel_base=g.channel_base, channel_max=g.channel_max,
                planes_train=g.planes_train, planes_eval=g.planes_eval, alpha_max_res=g.alpha_max_res,
                fov_deg=cam.fov_deg, radius=cam.radius, center=tuple(cam.center), depth_range=tuple(cam.depth_range))


def _mvcgan_fields(params: Params) -> dict:
    from gmnr.train.curriculum import curriculum_from_params
    cam, m = params.model_camera(), params.mvcgan  # MVCGAN's own camera, not the dataset's GMPI camera
    rays = [s.ray_resolution for s in curriculum_from_params(params).stages]
    return dict(resolution=params.training_resolution(), ray_resolution=rays[-1], min_ray_resolution=min(rays),
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
    g = params.gmpi
    # GMPI and GMNR condition on the camera (flattened world-to-camera matrix); a 2D StyleGAN2 does not
    c_dim = 0 if params.model == "stylegan2" else 16
    return Discriminator(c_dim=c_dim, img_resolution=params.training_resolution(), channel_base=g.channel_base,
                         channel_max=g.channel_max, epilogue_kwargs={"mbstd_group_size": g.mbstd_group_size})


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
    from pathlib import Path

    from gmnr.config import validate
    from gmnr.train.checkpoint import load_checkpoint
    state = load_checkpoint(Path(path), map_location=device)
    if "G_ema" not in state or "config" not in state:
        raise ValueError(f"{path}: not a gmnr generator checkpoint (needs 'G_ema' and 'config')")
    params = validate(state["config"], source=f"{path} config")
    G = build_generator(params).to(device)
    G.load_state_dict(state["G_ema"])
    return set_inference_vdr(G, inference_vdr).eval().requires_grad_(False), params, state
