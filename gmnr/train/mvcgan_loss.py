"""MVCGAN's objective as published (Xuanmeng-Zhang/MVCGAN ``main.py: train``,
``generators/generators.py: ImplicitGenerator3d.forward``), with the same phases as :class:`GMPILoss`.

* Fakes, in the discriminator step and the generator step alike: each latent's primary view is
  volume-rendered; an auxiliary view, drawn independently from the pose prior, is rendered too and
  backward-warped into the primary view with the primary depth (:func:`gmnr.render.warp.backward_warp`:
  real intrinsics, validity mask). *Stereo mixup* blends the warped auxiliary features into the
  primary ones, ``(1 - r) F + r warp(F_aux)``, r ~ U(0, r_max) per latent, and the decoder turns
  the blend into the image.
* Discriminator: non-saturating logistic loss, the pose loss (MSE between the angles a fake was
  rendered from and what the pose head predicts, weighted per curriculum phase) and R1 on the reals (which
  are mirrored with probability 1/2).
* Generator: non-saturating loss on the top-k scores (k annealed from B to ``topk_min`` B), the same
  pose loss, and the photometric loss (0.85 SSIM term + 0.15 L1) between the primary rendered RGB
  and the warped auxiliary RGB (``photometric_on: features``, a diagnostic: the rendered features).

Published defects fixed here: the warp uses the exact intrinsics (the published one approximates
the focal length by each ray's norm) and a validity mask (the published one mixes and compares
the zeros ``grid_sample`` returns outside the auxiliary view).

Phase-dependent values (fade, density noise, pose weight, top-k) are set by :meth:`set_step`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gmnr.render.camera import cam2world_to_pose
from gmnr.render.warp import backward_warp, photometric_loss
from gmnr.train.losses import PosePrior, r1_penalty

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


def published_pose(cam2world: Tensor, center=(0.0, 0.0, 0.0)) -> Tensor:
    """[B, 2]: the (pitch, yaw) pi-GAN's ``sample_camera_positions`` returns for a camera, i.e. the
    polar angle from world +y and the azimuth from world +x of its position on the sphere. In
    :mod:`gmnr.render.camera`'s frame (the same axes: +y up, the face towards +z) these are
    ``pi/2 - pitch`` and ``pi/2 - yaw``; the pose head regresses them, as published."""
    pose = cam2world_to_pose(cam2world, center)
    return torch.stack([math.pi / 2 - pose["pitch"], math.pi / 2 - pose["yaw"]], dim=-1)


class MVCGANLoss:
    def __init__(self, G, D, prior: PosePrior, cfg, noise_mode: str, autocast):
        """``cfg``: the ``mvcgan`` params section; ``prior``: MVCGAN's pose prior."""
        self.G, self.D, self.prior, self.cfg = G, D, prior, cfg
        self.r1_gamma = cfg.r1_gamma
        self.noise_mode = noise_mode
        self.autocast = autocast
        self.fade, self.pose_weight, self.topk = 1.0, 0.0, 1.0

    def set_step(self, step: int, phase, fade: float) -> None:
        """Enter ``step`` of curriculum ``phase`` (:class:`gmnr.train.curriculum.Phase`)."""
        c = self.cfg
        noise = c.density_noise * max(0.0, 1.0 - step / c.density_noise_steps) if c.density_noise_steps else 0.0
        self.G.set_phase(phase.resolution, phase.ray_resolution, fade, noise)
        self.fade, self.pose_weight = fade, phase.pose_weight
        self.topk = topk_fraction(step, c.topk_decay, c.topk_interval, c.topk_min)

    def augment_reals(self, images: Tensor) -> Tensor:
        """Mirror each real image with probability 1/2 (the published RandomHorizontalFlip), drawn
        from the step-seeded global RNG: the D loss and R1 see the same batch."""
        if not self.cfg.x_flip:
            return images
        flip = torch.rand(images.shape[0], device=images.device) < 0.5
        return torch.where(flip[:, None, None, None], images.flip(-1), images)

    # -- pieces -----------------------------------------------------------------------------------
    def _score(self, image: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast():
            logits, pose = self.D(image, self.fade)
        return logits.float(), pose.float()

    def _pose_loss(self, predicted: Tensor, cam2world: Tensor) -> Tensor:
        return F.mse_loss(predicted, published_pose(cam2world, self.prior.center).to(predicted))

    def _aux_cameras(self, n: int, device) -> Tensor:
        seed = int(torch.randint(0, 2 ** 62, ()))  # from the step-seeded global RNG: reproducible
        return self.prior.sample(n, torch.Generator().manual_seed(seed), device)

    def synthesize(self, z: Tensor, cams: Tensor, with_photometric: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """The published generator's training forward pass: image [B, 3, R, R] of latents z [B, z_dim]
        from their primary cameras ``cams`` [B, 4, 4], and the photometric loss (when asked) and
        warp statistics. The auxiliary view is rendered whenever mixup or the photometric loss is on."""
        c = self.cfg
        extras: dict[str, Tensor] = {}
        with self.autocast():
            ws = self.G.mapping(z, None)
            main = self.G.render_rays(ws, cams, noise_mode=self.noise_mode)
            features = main["features"]
            if c.photometric_weight > 0 or c.mixup_max > 0:
                aux_cams = self._aux_cameras(z.shape[0], z.device)
                aux = self.G.render_rays(ws, aux_cams, noise_mode=self.noise_mode)
                k = main["k_rays"]
                aux_values = torch.cat([aux["rgb_raw"], aux["features"]], dim=1).float()
                warped, valid = backward_warp(aux_values, main["depth_raw"].float(), cams, k, aux_cams, k)
                if with_photometric:
                    # As published, the rendered RGB (in [0, 1]) enters the loss as (x + 1) / 2, the
                    # mapping meant for [-1, 1] images: kept, so that weight 1 means what it means there.
                    # The features (sines integrated along the ray: in [-1, 1]) take the same mapping.
                    ours, theirs = ((main["rgb_raw"], warped[:, :3]) if c.photometric_on == "rgb"
                                    else (main["features"], warped[:, 3:]))
                    extras["photometric"] = photometric_loss((ours.float() + 1) / 2, (theirs + 1) / 2, valid)
                r = torch.rand(z.shape[0], device=z.device) * c.mixup_max
                features = stereo_mixup(features.float(), warped[:, 3:], valid, r)
                extras["warp_valid"] = valid.float().mean().detach()
            image = self.G.decode(ws, features)
        return image, extras

    # -- phases -----------------------------------------------------------------------------------
    def generator_loss(self, z: Tensor, cam2world: Tensor) -> tuple[Tensor, dict]:
        """z [B, z_dim], cam2world [B * N, 4, 4]: each latent's first view is its primary view."""
        b = z.shape[0]
        if cam2world.shape[0] % b:
            raise ValueError(f"cam2world batch {cam2world.shape[0]} is not a multiple of z batch {b}")
        cams = cam2world[::cam2world.shape[0] // b]
        image, extras = self.synthesize(z, cams, with_photometric=self.cfg.photometric_weight > 0)
        logits, pose = self._score(image)
        k = max(1, math.ceil(self.topk * b))
        adversarial = F.softplus(-logits.topk(k).values).mean()
        loss = adversarial
        stats: dict[str, Tensor] = {"loss_G": adversarial.detach(), "logits_fake_G": logits.detach().mean(),
                                    "topk": torch.tensor(float(k) / b)}
        if "photometric" in extras:
            loss = loss + self.cfg.photometric_weight * extras["photometric"]
            stats["loss_photometric"] = extras["photometric"].detach()
        if "warp_valid" in extras:
            stats["warp_valid"] = extras["warp_valid"]
        if self.pose_weight > 0:
            pose_loss = self._pose_loss(pose, cams)
            loss = loss + self.pose_weight * pose_loss
            stats["loss_pose_G"] = pose_loss.detach()
        return loss, stats

    def discriminator_loss(self, real: Tensor, real_cam2world: Tensor, z: Tensor, fake_cam2world: Tensor
                           ) -> tuple[Tensor, dict]:
        """The reals' cameras are not used: MVCGAN's discriminator learns pose from fakes only."""
        with torch.no_grad():
            fake, _ = self.synthesize(z, fake_cam2world, with_photometric=False)
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
        """R1 on reals, from the logits alone (the pose head takes no part); see :func:`r1_penalty`."""
        return r1_penalty(lambda x: self._score(x)[0], real, self.r1_gamma, interval)
