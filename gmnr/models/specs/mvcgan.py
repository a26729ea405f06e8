"""MVCGAN (Zhang et al., CVPR 2022): a FiLM-SIREN radiance field rendered to features, decoded by
GNet, trained from scratch on a progressive-growing curriculum with its own camera, pose loss and
stereo mixup. Reads its own section only: no GMPI knob retrains it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from gmnr.models.registry import LossContext, ModelSpec

if TYPE_CHECKING:
    from gmnr.config import Params
    from gmnr.train.curriculum import Curriculum


def curriculum(params: Params) -> Curriculum:
    """``mvcgan.curriculum``'s phases (progressive growing, pi-GAN style), up to the packed training
    resolution: phases above it are not used (the FFHQ-512 curriculum on a 256 dataset stops at 256)."""
    from gmnr.config import ParamsError
    from gmnr.train.curriculum import Curriculum, Phase
    m, top = params.mvcgan, params.training_resolution()
    usable = [s for s in m.curriculum if s.resolution <= top]  # a 512 phase does not apply to a 256 dataset
    if not usable or usable[0].start != 0:
        raise ParamsError(f"'mvcgan.curriculum.0.resolution': {m.curriculum[0].resolution} is above the packed "
                          f"training resolution {top} (pack.resolution); the first phase must fit")
    phases, previous = [], None
    for i, s in enumerate(usable):
        pose = s.pose_weight if s.pose_weight is not None else (
            m.pose_weight if s.resolution <= m.pose_max_resolution else 0.0)
        grows = previous is not None and s.resolution > previous
        phases.append(Phase(i, s.start, s.resolution, s.ray_resolution, s.batch_per_gpu, s.lr_g, s.lr_d, pose, grows))
        previous = s.resolution
    return Curriculum(tuple(phases), m.fade_steps)


def _recipe(params: Params):
    from gmnr.train.curriculum import Recipe
    m = params.mvcgan
    return Recipe(m.r1_gamma, m.r1_interval, m.grad_clip, 1)  # one view per latent (+ MVCGAN's aux view)


def generator_fields(params: Params) -> dict:
    cam, m = params.model_camera(), params.mvcgan  # MVCGAN's own camera, not the dataset's GMPI camera
    phases = curriculum(params).phases
    rays = [s.ray_resolution for s in phases]
    # The largest output is the curriculum's last usable phase (<= the packed resolution): no decoder
    # widths are needed for resolutions training never reaches.
    return dict(resolution=max(s.resolution for s in phases), ray_resolution=rays[-1], min_ray_resolution=min(rays),
                z_dim=m.z_dim, w_dim=m.w_dim, mapping_layers=m.mapping_layers, siren_layers=m.siren_layers,
                siren_hidden=m.siren_hidden, freq_scale=m.freq_scale, freq_bias=m.freq_bias, box_side=m.box_side,
                samples_per_ray=m.samples_per_ray, decoder_channels=tuple(m.decoder_channels),
                fov_deg=cam.fov_deg, center=tuple(cam.center), ray_range=tuple(cam.depth_range))


def _generator(params: Params):
    from gmnr.models.mvcgan import MVCGANConfig, MVCGANGenerator
    return MVCGANGenerator(MVCGANConfig(**generator_fields(params)))


def _discriminator(params: Params):
    from gmnr.models.mvcgan_discriminator import PoseDiscriminator
    m = params.mvcgan
    return PoseDiscriminator(params.training_resolution(), m.d_channel_base, m.d_channel_min, m.d_channel_max)


def _loss(params: Params, ctx: LossContext):
    from gmnr.train.mvcgan_loss import MVCGANLoss
    return MVCGANLoss(ctx.G, ctx.D, ctx.prior, params.mvcgan, params.train.noise_mode, ctx.autocast)


SPEC = ModelSpec(
    name="mvcgan",
    summary="MVCGAN: FiLM-SIREN radiance field + GNet decoder, multi-view consistency (trained from scratch)",
    sections=("mvcgan",),
    build_generator=_generator,
    build_discriminator=_discriminator,
    build_loss=_loss,
    curriculum=curriculum,
    recipe=_recipe,
)
