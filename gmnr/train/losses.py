"""GAN losses as objects that own their phases; the training loop only calls them.

Non-saturating logistic loss (Goodfellow et al. 2014, as in StyleGAN2), lazy R1 on real
images (Mescheder et al. 2018), and GMPI's generator objective: each latent is rendered from N
views sampled from the pose prior and scored on its worst (least realistic) view. GMNR adds
a view-consistency term (:class:`ViewConsistency`) to the generator's loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gmnr.models.factory import world2cam_label
from gmnr.render.camera import pose_to_cam2world, sample_pose_prior
from gmnr.render.warp import backward_warp, mirrored_view, photometric_loss


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


class ViewConsistency:
    """GMNR's view-consistency loss: render a second view of the same latent, warp it into the
    main view with the main view's depth and both cameras' real intrinsics and extrinsics, and
    penalise ``0.85 (1 - SSIM)/2 + 0.15 L1`` where the warp lands inside the second view.

    As in the published code the second view is the MPI's plain (GMPI) render, without
    view-dependent colour: the main view's alpha-VdR colour is compared against the
    view-independent colour of the same surface seen from elsewhere."""

    def __init__(self, weight: float, policy: str, prior: PosePrior):
        if policy not in ("mirrored", "prior"):
            raise ValueError(f"consistency view policy must be 'mirrored' or 'prior', got {policy!r}")
        self.weight, self.policy, self.prior = weight, policy, prior

    def second_cameras(self, main: torch.Tensor) -> torch.Tensor:
        if self.policy == "mirrored":
            return mirrored_view(main, self.prior.center)
        seed = int(torch.randint(0, 2 ** 62, ()))  # from the step-seeded global RNG: reproducible
        return self.prior.sample(main.shape[0], torch.Generator().manual_seed(seed), main.device)

    def __call__(self, main_image: torch.Tensor, main_depth: torch.Tensor, main_cams: torch.Tensor,
                 second_image: torch.Tensor, second_cams: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Images in [-1, 1] [B, 3, R, R], main depth [B, 1, R, R], cameras [B, 4, 4], pixel K [3, 3].

        Both views must come from one MPI (one synthesis, one noise draw): a second synthesis with
        random noise would differ from the first even for a perfectly consistent generator."""
        assert main_image.shape == second_image.shape and main_cams.shape == second_cams.shape, \
            f"views differ: {tuple(main_image.shape)} vs {tuple(second_image.shape)}"
        warped, valid = backward_warp((second_image + 1) / 2, main_depth, main_cams, k, second_cams, k)
        loss = photometric_loss(((main_image + 1) / 2).clamp(0, 1), warped.clamp(0, 1), valid)
        return self.weight * loss, {"loss_consistency": loss.detach(),
                                    "consistency_valid": valid.float().mean().detach()}


class GMPILoss:
    def __init__(self, G, D, r1_gamma: float, views_per_latent: int, noise_mode: str, autocast,
                 consistency: ViewConsistency | None = None):
        self.G, self.D = G, D
        self.r1_gamma = r1_gamma
        self.views = views_per_latent
        self.noise_mode = noise_mode
        self.autocast = autocast
        self.consistency = consistency

    def _render(self, z: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            ws = self.G.mapping(z, None)
            return self.G.render(ws, cam2world, noise_mode=self.noise_mode)["image"]

    def _score(self, image: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.D(image, world2cam_label(cam2world)).float().squeeze(1)

    def generator_loss(self, z: torch.Tensor, cam2world: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """z [B, z_dim], cam2world [B * N, 4, 4] (N views per latent, latent-major)."""
        b, v = z.shape[0], self.views
        assert cam2world.shape[0] == b * v, \
            f"generator_loss needs {v} views per latent, got cam2world {tuple(cam2world.shape)}"
        consistency = self.consistency if self.consistency is not None and self.consistency.weight > 0 else None
        cams = cam2world.reshape(b, v, 4, 4)
        extra = {}
        if consistency is not None:  # the second view of each latent's first view joins the same render
            second_cams = consistency.second_cameras(cams[:, 0])
            cams = torch.cat([cams, second_cams[:, None]], dim=1)
            extra["vdr_views"] = (torch.arange(v + 1, device=z.device) < v).repeat(b)  # not on the second view
        with self.autocast():
            ws = self.G.mapping(z, None)
            out = self.G.render(ws, cams.reshape(-1, 4, 4), noise_mode=self.noise_mode, **extra)
        images = out["image"].reshape(b, cams.shape[1], *out["image"].shape[1:])
        logits = self._score(images[:, :v].reshape(b * v, *images.shape[2:]), cam2world).reshape(b, v)
        worst = logits.min(dim=1).values
        loss = F.softplus(-worst).mean()
        stats = {"loss_G": loss.detach(), "logits_fake_G": worst.detach().mean()}
        if consistency is not None:
            depth = out["depth"].reshape(b, cams.shape[1], *out["depth"].shape[1:])
            with self.autocast():
                extra, s = consistency(images[:, 0], depth[:, 0], cams[:, 0], images[:, -1], cams[:, -1],
                                       self.G.canonical_intrinsics(z.device))
            loss = loss + extra
            stats.update(s)
        return loss, stats

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
