"""GAN losses as objects that own their phases; the training loop only calls them.

Non-saturating logistic loss (Goodfellow et al. 2014, as in StyleGAN2), lazy R1 on real
images (Mescheder et al. 2018), and GMPI's generator objective: each latent is rendered from N
views sampled from the pose prior and scored on its worst (least realistic) view.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gmnr.models.factory import world2cam_label
from gmnr.render.camera import pose_to_cam2world, sample_pose_prior


@dataclass(frozen=True)
class PosePrior:
    yaw_std: float
    pitch_std: float
    truncation: float
    radius: float
    center: tuple[float, float, float]

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """cam2world [n, 4, 4] of cameras drawn from the prior (roll 0, as GMPI)."""
        pose = sample_pose_prior(n, self.yaw_std, self.pitch_std, self.truncation, generator=generator,
                                 dtype=torch.float32)
        return pose_to_cam2world(pose["yaw"], pose["pitch"], 0.0, self.radius, self.center).to(device)


class GMPILoss:
    def __init__(self, G, D, r1_gamma: float, views_per_latent: int, noise_mode: str, autocast):
        self.G, self.D = G, D
        self.r1_gamma = r1_gamma
        self.views = views_per_latent
        self.noise_mode = noise_mode
        self.autocast = autocast

    def _render(self, z: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            ws = self.G.mapping(z, None)
            return self.G.render(ws, cam2world, noise_mode=self.noise_mode)["image"]

    def _score(self, image: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.D(image, world2cam_label(cam2world)).float().squeeze(1)

    def generator_loss(self, z: torch.Tensor, cam2world: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """z [B, z_dim], cam2world [B * N, 4, 4] (N views per latent, latent-major)."""
        b = z.shape[0]
        assert cam2world.shape[0] == b * self.views, \
            f"generator_loss needs {self.views} views per latent, got cam2world {tuple(cam2world.shape)}"
        logits = self._score(self._render(z, cam2world), cam2world).reshape(b, self.views)
        worst = logits.min(dim=1).values
        loss = F.softplus(-worst).mean()
        return loss, {"loss_G": loss.detach(), "logits_fake_G": worst.detach().mean()}

    def discriminator_loss(self, real: torch.Tensor, real_cam2world: torch.Tensor, z: torch.Tensor,
                           fake_cam2world: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            fake = self._render(z, fake_cam2world)
        logits_fake = self._score(fake, fake_cam2world)
        logits_real = self._score(real, real_cam2world)
        loss = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        return loss, {"loss_D": loss.detach(), "logits_real": logits_real.detach().mean(),
                      "logits_fake": logits_fake.detach().mean()}

    def r1_loss(self, real: torch.Tensor, real_cam2world: torch.Tensor, interval: int) -> tuple[torch.Tensor, dict]:
        """gamma/2 * E||grad_x D(x)||^2 on reals, scaled by the lazy interval (StyleGAN2)."""
        real = real.detach().requires_grad_(True)
        logits = self._score(real, real_cam2world)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=[1, 2, 3])
        loss = (self.r1_gamma / 2) * penalty.mean() * interval
        return loss, {"r1_penalty": penalty.detach().mean()}
