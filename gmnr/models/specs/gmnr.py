"""GMNR (Kumar et al., ICCV 2023): GMPI plus alpha-guided view-dependent colour and the
view-consistency loss. Reads GMPI's section (its backbone) and its own."""
from __future__ import annotations

from typing import TYPE_CHECKING

from gmnr.models.registry import LossContext, ModelSpec
from gmnr.models.specs.gmpi import (freeze_mapping, gmpi_fields, gmpi_loss, planes_eval, pretrained_backbone,
                                    stylegan2_discriminator)

if TYPE_CHECKING:
    from gmnr.config import Params


def _generator(params: Params):
    from gmnr.models.gmnr import GMNRConfig, GMNRGenerator
    n = params.gmnr
    return GMNRGenerator(GMNRConfig(
        **gmpi_fields(params), vdr_enabled=n.vdr, vdr_fraction=n.vdr_fraction, vdr_threshold=n.vdr_threshold,
        vdr_pos_freqs=n.pos_freqs, vdr_depth_freqs=n.depth_freqs, vdr_dir_freqs=tuple(n.dir_freqs),
        vdr_k_hidden=n.k_hidden, vdr_k_layers=n.k_layers, vdr_h_hidden=n.h_hidden, vdr_h_layers=n.h_layers,
        vdr_zero_init=n.zero_init))


def _loss(params: Params, ctx: LossContext):
    from gmnr.train.losses import ViewConsistency
    n = params.gmnr
    # GMNR's published training has no shading; gmnr.shading adds GMPI's
    return gmpi_loss(params, ctx, ViewConsistency(n.consistency_weight, n.consistency_view, ctx.prior), n.shading)


SPEC = ModelSpec(
    name="gmnr",
    summary="GMNR: GMPI + alpha-guided view-dependent colour + view-consistency loss",
    sections=("gmpi", "gmnr"),
    build_generator=_generator,
    build_discriminator=lambda params: stylegan2_discriminator(params, c_dim=16),
    build_loss=_loss,
    pretrained=pretrained_backbone,
    prepare=freeze_mapping,
    planes=planes_eval,
    multi_view_batches=True,
)
