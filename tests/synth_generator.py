"""A stand-in generator whose renders are the procedural demo heads (gmnr.data.synth) seen from
exactly the commanded camera: independent ground truth for the evaluation metrics.

``G.mapping(z)`` keeps z; ``G.render(ws, cam2world)`` renders the head of identity
``int(|z[0]| * 1000)`` (``synth.sample_head(default_rng(identity))``): one head per latent and returns the image in [-1, 1] and the true
camera depth. Knobs distort it in known ways: ``swap_identity_per_view`` shows a different
person in each view of one latent; ``yaw_offset`` renders from a yaw that differs from
the commanded one by that many radians; ``depth_transform`` replaces the returned depth.
"""
from __future__ import annotations

import numpy as np
import torch

from gmnr.data import synth
from gmnr.render.camera import cam2world_to_pose, intrinsics_from_fov, pose_to_cam2world


_RENDERS: dict = {}


class SynthGenerator(torch.nn.Module):
    z_dim = 4

    def __init__(self, resolution: int = 64, fov_deg: float = 12.6, yaw_offset: float = 0.0,
                 depth_transform=None, identity_offset: int = 0, swap_identity_per_view: bool = False):
        super().__init__()
        self.resolution, self.fov_deg = resolution, fov_deg
        self.yaw_offset, self.depth_transform, self.identity_offset = yaw_offset, depth_transform, identity_offset
        self.swap_identity_per_view = swap_identity_per_view

    def mapping(self, z, c=None, truncation_psi=1.0, update_w_avg=False):
        return z[:, None, :]

    @torch.no_grad()
    def render(self, ws, cam2world, n_planes=None, noise_mode="const"):
        views = cam2world.shape[0] // ws.shape[0]
        ids = ws[:, 0, 0].repeat_interleave(views)
        r = self.resolution
        k = intrinsics_from_fov(self.fov_deg, r)
        images, depths = [], []
        seen: dict[float, int] = {}
        for identity, c2w in zip(ids.tolist(), cam2world.double()):
            seed = int(abs(identity) * 1000) + self.identity_offset
            if self.swap_identity_per_view:  # each repeat of a latent in a batch shows another person
                seed += 7919 * seen.get(identity, 0)
                seen[identity] = seen.get(identity, 0) + 1
            if self.yaw_offset:
                pose = cam2world_to_pose(c2w[None])
                c2w = pose_to_cam2world(pose["yaw"] + self.yaw_offset, pose["pitch"], pose["roll"],
                                        float(pose["distance"][0]))[0]
            key = (seed, tuple(np.round(c2w.numpy(), 9).ravel().tolist()), r)
            if key not in _RENDERS:  # the same head from the same camera: render once per session
                head = synth.sample_head(np.random.default_rng(seed))
                _RENDERS[key] = synth.render_head(head, c2w.float(), k.float(), r, r)
            out = _RENDERS[key]
            images.append(torch.from_numpy(np.asarray(out["rgb"])).permute(2, 0, 1).float() / 127.5 - 1)
            depth = torch.as_tensor(np.asarray(out["depth"]), dtype=torch.float32)
            if self.depth_transform is not None:
                depth = self.depth_transform(depth)
            depths.append(depth[None])
        return {"image": torch.stack(images), "depth": torch.stack(depths)}


