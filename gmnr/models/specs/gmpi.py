"""GMPI (Zhao et al., ECCV 2022): a StyleGAN2 generator whose output is a multiplane image, trained
against a camera-conditioned StyleGAN2 discriminator. GMNR and the 2D backbone build on its pieces
(the network sizes in ``gmpi``, the discriminator, the loss), so they live here."""
from __future__ import annotations

from typing import TYPE_CHECKING

from gmnr.models.registry import LossContext, ModelSpec

if TYPE_CHECKING:
    from gmnr.config import Params

# The FFHQ StyleGAN2 generator (NVlabs config "stylegan2", GMPI's configs/gmpi.yml): what a gmpi
# architecture key means when it is null and no pretrained file says otherwise.
PUBLISHED_ARCHITECTURE = {"z_dim": 512, "w_dim": 512, "mapping_layers": 8, "channel_base": 32768,
                          "channel_max": 512, "conv_clamp": None}
SHAPE_KEYS = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")  # conv_clamp changes no shape


def architecture(params: Params) -> dict:
    """The gmpi architecture keys of ``params``; null ones are the published values, which is only
    right without a pretrained file (with one, gmnr.models.factory.resolve_architecture must run first)."""
    g = params.gmpi
    missing = [k for k in SHAPE_KEYS if getattr(g, k) is None]
    if missing and g.pretrained:
        raise ValueError(f"gmpi.{', gmpi.'.join(missing)} are null: the architecture of {g.pretrained} has not been "
                         f"resolved (gmnr.models.factory.resolve_architecture)")
    return {k: PUBLISHED_ARCHITECTURE[k] if getattr(g, k) is None else getattr(g, k) for k in PUBLISHED_ARCHITECTURE}


def gmpi_fields(params: Params) -> dict:
    """GMPIConfig's fields from params: the network sizes of ``gmpi`` and the dataset's camera."""
    cam, g = params.camera(), params.gmpi
    return dict(resolution=params.training_resolution(), **architecture(params),
                planes_train=g.planes_train, planes_eval=g.planes_eval,
                alpha_max_res=g.alpha_max_res, fov_deg=cam.fov_deg, radius=cam.radius, center=tuple(cam.center),
                depth_range=tuple(cam.depth_range), yaw_max=cam.truncation * cam.yaw_std,
                pitch_max=cam.truncation * cam.pitch_std)


def stylegan2_discriminator(params: Params, c_dim: int):
    """The StyleGAN2 discriminator at the gmpi sizes; ``c_dim`` 16 conditions it on the camera
    (the flattened world-to-camera matrix, as GMPI and GMNR), 0 for a 2D model."""
    from gmnr.models.stylegan2 import Discriminator
    g, arch = params.gmpi, architecture(params)
    return Discriminator(c_dim=c_dim, img_resolution=params.training_resolution(), channel_base=arch["channel_base"],
                         channel_max=arch["channel_max"], conv_clamp=arch["conv_clamp"], cmap_dim=g.d_cmap_dim,
                         epilogue_kwargs={"mbstd_group_size": g.mbstd_group_size})


def gmpi_loss(params: Params, ctx: LossContext, consistency=None, shaded: bool = True):
    """GMPI's losses (non-saturating, camera-conditioned D, R1), with GMNR's view consistency when
    given, and GMPI's shading-guided training when ``shaded`` and ``gmpi.shading.enabled``."""
    import torch

    from gmnr.render.camera import pose_to_cam2world
    from gmnr.train.losses import GMPILoss, Shading
    sh, cam = params.gmpi.shading, params.camera()
    shading = (Shading(sh.start, sh.grow, sh.ambient, sh.diffuse, sh.light_yaw_std, sh.light_pitch_mean,
                       sh.light_pitch_std, cam.radius, tuple(cam.center)) if shaded and sh.enabled else None)
    label_frame = pose_to_cam2world(torch.zeros(1), torch.zeros(1), 0.0, cam.radius, tuple(cam.center))[0]
    return GMPILoss(ctx.G, ctx.D, ctx.recipe.r1_gamma, ctx.recipe.views_per_latent, params.train.noise_mode,
                    ctx.autocast, label_frame.to(ctx.device), consistency, shading)


def pretrained_backbone(params: Params) -> str | None:
    """GMPI, GMNR and the 2D backbone start from ``gmpi.pretrained``, the StyleGAN2 weights."""
    return params.gmpi.pretrained or None


def freeze_mapping(G, params: Params) -> None:
    """GMPI keeps the pretrained mapping network frozen unless ``gmpi.train_mapping``: out of the
    optimiser, no gradient computed."""
    if not params.gmpi.train_mapping:
        G.mapping.requires_grad_(False)


def planes_eval(params: Params) -> int:
    return params.gmpi.planes_eval


def _generator(params: Params):
    from gmnr.models.gmpi import GMPIConfig, GMPIGenerator
    return GMPIGenerator(GMPIConfig(**gmpi_fields(params)))


SPEC = ModelSpec(
    name="gmpi",
    summary="GMPI: StyleGAN2 -> multiplane image, camera-conditioned discriminator",
    sections=("gmpi",),
    build_generator=_generator,
    build_discriminator=lambda params: stylegan2_discriminator(params, c_dim=16),
    build_loss=gmpi_loss,
    pretrained=pretrained_backbone,
    prepare=freeze_mapping,
    planes=planes_eval,
    multi_view_batches=True,
)
