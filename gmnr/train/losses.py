"""GAN losses as objects that own their phases; the training loop only calls them.

Non-saturating logistic loss (Goodfellow et al. 2014, as in StyleGAN2), R1 on real images
(Mescheder et al. 2018; every step in GMPI's code, lazily every N steps when asked), and GMPI's
generator objective (apple/ml-gmpi ``gmpi/train.py``, ``train_helpers.py:find_worst_view_per_z``):
each latent is rendered from N views sampled from the pose prior and scored on its worst (least
realistic) view; D sees one view per latent. GMPI lights its fake MPIs with random directional
light from step 1000 on (:class:`Shading`). GMNR adds a view-consistency term
(:class:`ViewConsistency`) on the worst view and its yaw mirror.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gmnr.models.factory import camera_label
from gmnr.render.camera import pose_to_cam2world, sample_pose_prior
from gmnr.render.shading import shade_colours, shading_map
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


@dataclass(frozen=True)
class Shading:
    """GMPI's shading-guided training (``aug_with_lighting*`` and ``light_renderer.py``): from step
    ``start`` on, every fake MPI's colours are multiplied by ``r * (ambient + diffuse * lambert)``
    with ``r`` ramping linearly from 0 to 1 over ``grow`` steps, for a light on the camera sphere
    at yaw ~ N(0, light_yaw_std), pitch ~ N(light_pitch_mean, light_pitch_std), both truncated at
    2 std. The published ramp counts the light renderer's calls, two per iteration (D and G
    step), so its 1000 calls are 500 iterations here."""
    start: int = 1000
    grow: int = 500
    ambient: float = 0.9
    diffuse: float = 0.1
    light_yaw_std: float = 0.2
    light_pitch_mean: float = 0.2
    light_pitch_std: float = 0.05
    radius: float = 1.0
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def strength(self, step: int) -> float:
        """The ramp r at ``step`` (0 before ``start``: no shading)."""
        if step <= self.start:  # published: applied while discriminator.step > start_iter
            return 0.0
        return min(1.0, (step - self.start) / max(1, self.grow))

    def light_directions(self, n: int, canonical_cam2world: torch.Tensor) -> torch.Tensor:
        """Unit light directions [n, 3] (from the light towards the sphere centre) in the canonical
        camera's frame, drawn from the global RNG (seeded per step by the trainer)."""
        angles = sample_pose_prior(n, self.light_yaw_std, self.light_pitch_std, 2.0, dtype=torch.float32)
        light = pose_to_cam2world(angles["yaw"], angles["pitch"] + self.light_pitch_mean, 0.0, self.radius,
                                  self.center)[:, :3, 3].to(canonical_cam2world)
        direction = torch.nn.functional.normalize(torch.tensor(self.center).to(light) - light, dim=-1)
        return direction @ canonical_cam2world.reshape(4, 4)[:3, :3]  # world -> canonical: R^T d

    def apply(self, G, mpi: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """The MPI with shaded colours (the same multiplier on every plane, as GMPI), or as it is."""
        r = self.strength(step)
        if r == 0.0:
            return mpi
        light = self.light_directions(mpi["rgb"].shape[0], G.canonical_cam2world)
        shading = r * shading_map(mpi["alpha"], mpi["depths"], G.plane_half_extents[-1], light,
                                  self.ambient, self.diffuse)
        return {**mpi, "rgb": shade_colours(mpi["rgb"], shading), "background": shade_colours(mpi["background"], shading)}


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


def r1_penalty(score: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, gamma: float,
               interval: int) -> tuple[torch.Tensor, dict]:
    """gamma/2 * E||grad_x D(x)||^2 on reals, scaled by the interval when it is lazy (StyleGAN2), and
    the mean penalty for logging. ``score`` maps images [B, 3, H, W] to logits [B]: each loss passes
    its own discriminator call (GMPI's with camera labels, MVCGAN's dropping the pose head), so the
    penalty itself is computed in one place. The caller's ``real`` is not modified."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(real).sum(), real, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3])
    return (gamma / 2) * penalty.mean() * interval, {"r1_penalty": penalty.detach().mean()}


class GMPILoss:
    """``label_frame``: the cam2world [4, 4] of the frame D's camera labels are expressed in (GMPI's
    world frame is its canonical camera's)."""

    def __init__(self, G, D, r1_gamma: float, views_per_latent: int, noise_mode: str, autocast,
                 label_frame: torch.Tensor, consistency: ViewConsistency | None = None,
                 shading: Shading | None = None):
        self.G, self.D = G, D
        self.label_frame = label_frame
        self.r1_gamma = r1_gamma
        self.views = views_per_latent
        self.noise_mode = noise_mode
        self.autocast = autocast
        self.consistency = consistency
        self.shading = shading
        self.step = 0

    def set_step(self, step: int, stage, fade: float) -> None:
        self.step = step

    def augment_reals(self, images: torch.Tensor) -> torch.Tensor:
        return images  # GMPI and GMNR show D the real images as they are

    def _mpi(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The (shaded, from the shading start on) MPI of each latent, at the training plane count."""
        ws = self.G.mapping(z, None)
        mpi = self.G.synthesize(ws, self.G.cfg.planes_train, noise_mode=self.noise_mode)
        return self.shading.apply(self.G, mpi, self.step) if self.shading is not None else mpi

    def _render(self, z: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.G.render_mpi(self._mpi(z), cam2world)["image"]

    def _score(self, image: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.D(image, camera_label(cam2world, self.label_frame)).float().squeeze(1)

    def generator_loss(self, z: torch.Tensor, cam2world: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """z [B, z_dim], cam2world [B * N, 4, 4] (N views per latent, latent-major)."""
        b, v = z.shape[0], self.views
        assert cam2world.shape[0] == b * v, \
            f"generator_loss needs {v} views per latent, got cam2world {tuple(cam2world.shape)}"
        consistency = self.consistency if self.consistency is not None and self.consistency.weight > 0 else None
        with self.autocast():
            mpi = self._mpi(z)
            out = self.G.render_mpi(mpi, cam2world)
        logits = self._score(out["image"], cam2world).reshape(b, v)
        worst, index = logits.min(dim=1)
        loss = F.softplus(-worst).mean()
        stats = {"loss_G": loss.detach(), "logits_fake_G": worst.detach().mean()}
        if consistency is not None:
            # GMNR: the worst view and its mirror (published: the worst view's yaw negated), both
            # from the same MPI; the mirror without view-dependent colour, as published
            pick = torch.arange(b, device=z.device) * v + index
            main_cams = cam2world[pick]
            second_cams = consistency.second_cameras(main_cams)
            with self.autocast():
                second = self.G.render_mpi(mpi, second_cams, vdr_views=torch.zeros(b, dtype=torch.bool))
                extra, s = consistency(out["image"][pick], out["depth"][pick], main_cams, second["image"],
                                       second_cams, self.G.canonical_intrinsics(z.device))
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
        """R1 on reals (GMPI: ``0.5 * r1_lambda * ||grad||^2``, every step); see :func:`r1_penalty`."""
        return r1_penalty(lambda x: self._score(x, real_cam2world), real, self.r1_gamma, interval)
