"""MVCGAN's objective (Zhang et al., CVPR 2022), with the same phases as :class:`GMPILoss`.

* Discriminator: non-saturating logistic loss, plus the pose loss (MSE between the camera
  (yaw, pitch) a fake was rendered from and what the pose head predicts), plus R1 on reals.
* Generator: the primary view of each latent is volume-rendered; an auxiliary view drawn
  independently from the pose prior is rendered too and backward-warped into the primary view with
  the primary depth (:func:`gmnr.render.warp.backward_warp`, real intrinsics, validity mask).
  The warped low-resolution RGB enters the photometric loss (0.85 SSIM term + 0.15 L1), the warped
  features enter *stereo mixup*: ``(1 - r) F + r warp(F_aux)`` on valid pixels, r ~ U(0, r_max)
  per latent, decoded and scored by the discriminator. Only the top-k scores enter the adversarial
  loss (k annealed from B to ``topk_min`` B), plus the pose loss.

Stage-dependent values (fade, density noise, pose weight, top-k) are set by :meth:`set_step`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gmnr.render.camera import cam2world_to_pose
from gmnr.render.warp import backward_warp, photometric_loss
from gmnr.train.losses import PosePrior

Tensor = torch.Tensor


def stereo_mixup(features: Tensor, warped: Tensor, valid: Tensor, r: Tensor) -> Tensor:
    """``(1 - r) F + r warp(F_aux)`` where the warp is valid, F elsewhere. features, warped
    [B, C, H, W]; valid [B, 1, H, W] (bool); r [B] in [0, 1]."""
    if features.shape != warped.shape or valid.shape != (features.shape[0], 1, *features.shape[-2:]):
        raise ValueError(f"stereo_mixup: features {tuple(features.shape)}, warped {tuple(warped.shape)}, "
                         f"valid {tuple(valid.shape)}")
    weight = r.to(features.dtype).reshape(-1, 1, 1, 1) * valid.to(features.dtype)
    return features + weight * (warped - features)


def topk_fraction(step: int, decay: float, interval: int, minimum: float) -> float:
    """pi-GAN's schedule: ``max(decay^(step / interval), minimum)``."""
    return max(decay ** (step / interval), minimum)


class MVCGANLoss:
    def __init__(self, G, D, prior: PosePrior, cfg, noise_mode: str, autocast):
        """``cfg``: the ``mvcgan`` params section."""
        self.G, self.D, self.prior, self.cfg = G, D, prior, cfg
        self.r1_gamma = cfg.r1_gamma
        self.noise_mode = noise_mode
        self.autocast = autocast
        self.fade, self.pose_weight, self.topk = 1.0, 0.0, 1.0

    def set_step(self, step: int, stage, fade: float) -> None:
        """Enter ``step`` of curriculum ``stage`` (:class:`gmnr.train.curriculum.Stage`)."""
        c = self.cfg
        noise = c.density_noise * max(0.0, 1.0 - step / c.density_noise_steps) if c.density_noise_steps else 0.0
        self.G.set_stage(stage.resolution, stage.ray_resolution, fade, noise)
        self.fade, self.pose_weight = fade, stage.pose_weight
        self.topk = topk_fraction(step, c.topk_decay, c.topk_interval, c.topk_min)

    # -- pieces -----------------------------------------------------------------------------------
    def _pose(self, cam2world: Tensor) -> Tensor:
        pose = cam2world_to_pose(cam2world, self.prior.center)
        return torch.stack([pose["yaw"], pose["pitch"]], dim=-1)

    def _score(self, image: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast():
            logits, pose = self.D(image, self.fade)
        return logits.float(), pose.float()

    def _pose_loss(self, predicted: Tensor, cam2world: Tensor) -> Tensor:
        return F.mse_loss(predicted, self._pose(cam2world).to(predicted))

    def _aux_cameras(self, n: int, device) -> Tensor:
        seed = int(torch.randint(0, 2 ** 62, ()))  # from the step-seeded global RNG: reproducible
        return self.prior.sample(n, torch.Generator().manual_seed(seed), device)

    # -- phases -----------------------------------------------------------------------------------
    def generator_loss(self, z: Tensor, cam2world: Tensor) -> tuple[Tensor, dict]:
        """z [B, z_dim], cam2world [B * N, 4, 4]: each latent's first view is its primary view."""
        b = z.shape[0]
        if cam2world.shape[0] % b:
            raise ValueError(f"cam2world batch {cam2world.shape[0]} is not a multiple of z batch {b}")
        cams = cam2world[::cam2world.shape[0] // b]
        c = self.cfg
        stats: dict[str, Tensor] = {}
        with self.autocast():
            ws = self.G.mapping(z, None)
            main = self.G.render_rays(ws, cams, noise_mode=self.noise_mode)
            features, loss = main["features"], torch.zeros((), device=z.device)
            if c.photometric_weight > 0 or c.mixup_max > 0:
                aux_cams = self._aux_cameras(b, z.device)
                aux = self.G.render_rays(ws, aux_cams, noise_mode=self.noise_mode)
                k = main["k_rays"]
                warped, valid = backward_warp(aux["features"].float(), main["depth_raw"].float(), cams, k, aux_cams, k)
                photometric = photometric_loss(main["features"][:, :3].float().clamp(0, 1),
                                               warped[:, :3].clamp(0, 1), valid)
                loss = loss + c.photometric_weight * photometric
                r = torch.rand(b, device=z.device) * c.mixup_max
                features = stereo_mixup(main["features"].float(), warped, valid, r)
                stats.update(loss_photometric=photometric.detach(), warp_valid=valid.float().mean().detach())
            image = self.G.decode(ws, features)
        logits, pose = self._score(image)
        k = max(1, math.ceil(self.topk * b))
        adversarial = F.softplus(-logits.topk(k).values).mean()
        loss = loss + adversarial
        if self.pose_weight > 0:
            pose_loss = self._pose_loss(pose, cams)
            loss = loss + self.pose_weight * pose_loss
            stats["loss_pose_G"] = pose_loss.detach()
        stats.update(loss_G=adversarial.detach(), logits_fake_G=logits.detach().mean(),
                     topk=torch.tensor(float(k) / b))
        return loss, stats

    def discriminator_loss(self, real: Tensor, real_cam2world: Tensor, z: Tensor, fake_cam2world: Tensor
                           ) -> tuple[Tensor, dict]:
        with torch.no_grad(), self.autocast():
            ws = self.G.mapping(z, None)
            fake = self.G.render(ws, fake_cam2world, noise_mode=self.noise_mode)["image"]
        logits_fake, pose = self._score(fake.float())
        logits_real, _ = self._score(real)
        loss = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        stats = {"loss_D": loss.detach(), "logits_real": logits_real.detach().mean(),
                 "logits_fake": logits_fake.detach().mean()}
        if self.pose_weight > 0:
            pose_loss = self._pose_loss(pose, fake_cam2world)
            loss = loss + self.pose_weight * pose_loss
            stats["loss_pose_D"] = pose_loss.detach()
        return loss, stats

    def r1_loss(self, real: Tensor, real_cam2world: Tensor, interval: int) -> tuple[Tensor, dict]:
        """gamma/2 * E||grad_x D(x)||^2 on reals, scaled by the lazy interval."""
        real = real.detach().requires_grad_(True)
        logits, _ = self._score(real)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=[1, 2, 3])
        return (self.r1_gamma / 2) * penalty.mean() * interval, {"r1_penalty": penalty.detach().mean()}
