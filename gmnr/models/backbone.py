"""The StyleGAN2 backbone of GMPI and GMNR on its own: a 2D generator (``model: stylegan2``).

GMPI and GMNR start from a StyleGAN2 trained on the dataset (the NVlabs checkpoints for FFHQ,
AFHQ, MetFaces). For a dataset without such a checkpoint - the procedural demo - this class is
that StyleGAN2: :class:`gmnr.models.gmpi.GMPIGenerator` subclasses it, so its ``mapping.*`` and
``synthesis.*`` weights (and its discriminator's) initialise GMPI and GMNR name for name. It
trains with the same trainer, and ``render`` ignores the camera: the image of each latent is
returned once per requested view.
"""
from __future__ import annotations

import torch
from torch import nn

from gmnr.models.stylegan2 import MappingNetwork, SynthesisNetwork


class StyleGAN2Backbone(nn.Module):
    """Mapping network z -> w and synthesis network w -> RGB at ``cfg.resolution`` (a GMPIConfig:
    z_dim, w_dim, mapping_layers, channel_base, channel_max, conv_clamp; the plane and camera fields
    are GMPI's)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg.w_dim, cfg.resolution, 3, cfg.channel_base, cfg.channel_max,
                                          conv_clamp=cfg.conv_clamp)
        self.mapping = MappingNetwork(cfg.z_dim, 0, cfg.w_dim, self.synthesis.num_ws, num_layers=cfg.mapping_layers)
        self.z_dim, self.w_dim, self.num_ws = cfg.z_dim, cfg.w_dim, self.synthesis.num_ws

    def synthesize(self, ws: torch.Tensor, n_planes: int | None = None, noise_mode: str = "const"
                   ) -> dict[str, torch.Tensor]:
        """ws [B, num_ws, w_dim] -> {"rgb": [B, 3, R, R]} (``n_planes`` is ignored: a 2D image)."""
        return {"rgb": self.synthesis(ws, noise_mode=noise_mode)}

    def render_mpi(self, mpi: dict[str, torch.Tensor], cam2world: torch.Tensor, intrinsics: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
        """image [B * V, 3, R, R] for cam2world [B * V, 4, 4] (latent-major). A 2D generator has no
        viewpoint: every view of a latent is the same image."""
        image = mpi["rgb"]
        views = cam2world.shape[0] // image.shape[0]
        assert cam2world.shape[0] == views * image.shape[0], \
            f"cam2world batch {cam2world.shape[0]} must be a multiple of the latent batch {image.shape[0]}"
        return {"image": image.repeat_interleave(views, 0) if views > 1 else image}

    def baking(self) -> bool:
        """Whether :meth:`bake` readies the scene for many views (GMNR's ``vdr: baked``); here never."""
        return False

    def bake(self, mpi: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return mpi

    def render(self, ws: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor | None = None,
               n_planes: int | None = None, noise_mode: str = "const") -> dict[str, torch.Tensor]:
        """ws [B, num_ws, w_dim] -> image [B * V, 3, R, R] for cam2world [B * V, 4, 4] (latent-major)."""
        return self.render_mpi(self.synthesize(ws, n_planes, noise_mode), cam2world, intrinsics)

    def forward(self, z: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor | None = None,
                truncation_psi: float = 1.0, n_planes: int | None = None, noise_mode: str = "const"
                ) -> dict[str, torch.Tensor]:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [B, {self.z_dim}], got {tuple(z.shape)}"
        ws = self.mapping(z, None, truncation_psi=truncation_psi)
        return self.render(ws, cam2world, intrinsics, n_planes, noise_mode)
