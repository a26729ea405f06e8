"""The 2D StyleGAN2 backbone alone (GMPI's pretraining): one image per latent, no camera, no depth.
Reads GMPI's section for its sizes; evaluation measures FID, KID and speed only."""
from __future__ import annotations

from typing import TYPE_CHECKING

from gmnr.models.registry import LossContext, ModelSpec
from gmnr.models.specs.gmpi import gmpi_fields, gmpi_loss, pretrained_backbone, stylegan2_discriminator

if TYPE_CHECKING:
    from gmnr.config import Params


def _generator(params: Params):
    from gmnr.models.backbone import StyleGAN2Backbone
    from gmnr.models.gmpi import GMPIConfig
    return StyleGAN2Backbone(GMPIConfig(**gmpi_fields(params)))


def _recipe(params: Params):
    from gmnr.train.curriculum import train_recipe
    return train_recipe(params, views_per_latent=1)  # a 2D image has one view


def _loss(params: Params, ctx: LossContext):
    return gmpi_loss(params, ctx, shaded=False)  # a 2D image has no shape to shade


SPEC = ModelSpec(
    name="stylegan2",
    summary="StyleGAN2: the 2D backbone alone (GMPI's pretraining)",
    sections=("gmpi",),
    build_generator=_generator,
    build_discriminator=lambda params: stylegan2_discriminator(params, c_dim=0),
    build_loss=_loss,
    recipe=_recipe,
    pretrained=pretrained_backbone,
    has_viewpoint=False,
)
