"""Where does a trained MVCGAN keep its head: in its density, or only in its features?

MVCGAN's depth video is the density's expected depth. On the demo it stays a fog (benchmarks/mvcgan_learning.py's
``field_by_step``), yet its faces turn with the camera. This measures the geometry the *features* carry,
independently of the density, by multi-view stereo on the generator's own renderings: for each latent, the
rendered features (the 256-d, or the demo's 64-d, SIREN features the decoder reads) of a frontal view and of four
views at yaw +-0.3 and pitch +-0.15 (MVCGAN's pose prior's standard deviations); a plane sweep over the ray range
warps each auxiliary view's features into the frontal view at every candidate depth
(:func:`gmnr.render.warp.backward_warp`, exact intrinsics) and each ray takes the depth where the views agree
best (mean absolute feature difference over the four views, over a 3 x 3 window of rays). Where the features
hold a head, the sweep finds it; the density's expected depth is then compared with it over every ray
(least-squares slope and offset, correlation): slope 1 when the density puts the surface where the features
do, 0 for a fog. Beside it, the field's own RGB (a linear head on the features that only MVCGAN's photometric
loss trains, as published) as training renders it (jittered samples, the light no sample stops lost): its
contrast across the image, and that loss with the density's depth against a flat plane mid-range (equal: the
loss cannot tell the geometry).

``tests/test_mvcgan.py::test_plane_sweep_finds_the_head_and_the_wall_of_the_analytic_scene`` checks the sweep
on the analytic head in front of a wall (tests/analytic_scene.py), whose depth is known.

For every checkpoint of a run folder (``gmnr train``'s ``checkpoints/step-*.pt``) it writes, to
``benchmarks/results/mvcgan_geometry-<run>.{json,png}``: the relief of both depths (mean over the middle half
of the rays minus the mean over the outer two rings: negative when the middle is nearer, a head in front of
a background), the relation of density depth to feature depth, and for the last checkpoint a figure of
decoded image, feature depth and density depth per latent on one colour scale (the ray range).

    python benchmarks/mvcgan_geometry.py runs/demo/learning/mvcgan-lr5x-32-3000     # about 1 min
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gmnr.render.camera import pose_to_cam2world  # noqa: E402
from gmnr.render.warp import backward_warp, photometric_loss  # noqa: E402

Tensor = torch.Tensor
AUX_POSES = ((0.3, 0.0), (-0.3, 0.0), (0.0, 0.15), (0.0, -0.15))  # (yaw, pitch) of the auxiliary views
SWEEP_PLANES = 49  # candidate depths over the ray range: 0.005 apart over MVCGAN's [0.88, 1.12]


def plane_sweep_depth(reference: Tensor, ref_cam: Tensor, k: Tensor, auxiliaries: list[Tensor],
                      aux_cams: list[Tensor], depths: Tensor, window: int = 3) -> Tensor:
    """Camera-z depth [B, 1, r, r] of each ray of ``reference`` [B, C, r, r] (seen from ``ref_cam`` [B, 4, 4],
    pixel intrinsics ``k`` [3, 3] or [1 or B, 3, 3], the same for every view) from views ``auxiliaries`` (each [B, C, r, r]) seen from
    ``aux_cams`` (each [B, 4, 4]): the candidate of ``depths`` [D] at which the auxiliary views, warped into the
    reference view on the fronto-parallel plane at that depth, differ least from it (mean absolute difference
    over channels and views, where the warp is valid, averaged over a ``window`` x ``window`` of rays)."""
    if reference.ndim != 4 or len(auxiliaries) != len(aux_cams) or not auxiliaries:
        raise ValueError(f"plane_sweep_depth: reference {tuple(reference.shape)}, {len(auxiliaries)} views, "
                         f"{len(aux_cams)} cameras")
    for view in auxiliaries:
        if view.shape != reference.shape:
            raise ValueError(f"plane_sweep_depth: view {tuple(view.shape)} against reference {tuple(reference.shape)}")
    b, _, h, w = reference.shape
    costs = []
    for depth in depths.tolist():
        plane = torch.full((b, 1, h, w), depth, dtype=reference.dtype, device=reference.device)
        total = torch.zeros(b, 1, h, w, dtype=reference.dtype, device=reference.device)
        weight = torch.zeros_like(total)
        for view, cam in zip(auxiliaries, aux_cams):
            warped, valid = backward_warp(view, plane, ref_cam, k, cam, k)
            total = total + (warped - reference).abs().mean(1, keepdim=True) * valid
            weight = weight + valid.to(total.dtype)
        cost = total / weight.clamp(min=1)
        cost = torch.where(weight > 0, cost, torch.full_like(cost, float("inf")))  # no view sees it: no vote
        costs.append(cost)
    cost = torch.cat(costs, 1)  # [B, D, r, r]
    finite = torch.isfinite(cost)
    pad = window // 2
    summed = F.avg_pool2d(F.pad(torch.where(finite, cost, 0.0), (pad,) * 4, mode="replicate"), window, 1)
    counted = F.avg_pool2d(F.pad(finite.to(cost.dtype), (pad,) * 4, mode="replicate"), window, 1)
    smoothed = torch.where(counted > 0, summed / counted.clamp(min=1e-12), float("inf"))
    return depths.to(reference)[smoothed.argmin(1)][:, None]


def relief(depth: Tensor) -> Tensor:
    """[B]: mean depth over the middle half of the rays (each way) minus the mean over the two outermost rings;
    negative when the middle is nearer (a head in front of a background)."""
    r = depth.shape[-1]
    ring = torch.ones(r, r, dtype=torch.bool, device=depth.device)
    ring[2:-2, 2:-2] = False
    return middle(depth) - depth[..., ring].mean(-1).flatten(1).mean(1)


def middle(depth: Tensor) -> Tensor:
    """[B]: mean depth over the middle half of the rays (each way), where the face is in every demo image."""
    r = depth.shape[-1]
    return depth[..., r // 4: r - r // 4, r // 4: r - r // 4].flatten(1).mean(1)


def demo_truth(resolution: int, seed: int, heads: int = 8) -> dict:
    """The demo heads' own depth, seen as MVCGAN sees them: the synthetic identities of images 0..``heads``-1 (of
    the demo set made with ``seed``,
    rendered frontally by the demo's camera (gmnr.data.synth: fov 12.6, radius 1; MVCGAN's fov 12 frames them
    within 5 %) at ``resolution`` rays: the mean depth over the middle half (all face) and the nearest point.
    The demo's background is painted in screen space: it has no depth to compare."""
    import numpy as np

    from gmnr.data.synth import render_head, sample_head
    from gmnr.data.synth.dataset import FFHQ_CAMERA, sample_view
    from gmnr.render.camera import intrinsics_from_fov
    k = intrinsics_from_fov(FFHQ_CAMERA.fov_deg, resolution)
    front = pose_to_cam2world(torch.zeros(1), torch.zeros(1), 0.0, FFHQ_CAMERA.radius)[0]
    middles, nearest = [], []
    for index in range(heads):
        head = sample_head(np.random.default_rng(sample_view(seed, index, FFHQ_CAMERA, 0.0)["identity_seed"]))
        out = render_head(head, front, k, resolution, resolution, antialias=False)
        depth, mask = torch.from_numpy(out["depth"]), torch.from_numpy(out["mask"])
        q = resolution // 4
        centre, covered = depth[q:resolution - q, q:resolution - q], mask[q:resolution - q, q:resolution - q]
        middles.append(float(centre[covered].mean()))
        nearest.append(float(depth[mask].min()))
    return {"heads": heads, "middle_depth": round(sum(middles) / heads, 4), "nearest": round(min(nearest), 4)}


def relation(y: Tensor, x: Tensor) -> dict:
    """Least-squares ``y = slope x + offset`` over every ray, and the correlation."""
    x, y = x.flatten().double(), y.flatten().double()
    slope, offset = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y[:, None]).solution.flatten().tolist()
    return {"slope": round(slope, 3), "offset": round(offset, 3),
            "correlation": round(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), 3)}


@torch.no_grad()
def generator_geometry(G, params, latents: int = 8, seed: int = 0) -> dict:
    """The feature depth and the density depth of ``latents`` latents (seed ``seed``) seen from the frontal
    camera at the generator's ray resolution; see the module's docstring."""
    cam = params.model_camera()
    torch.manual_seed(seed)
    z = torch.randn(latents, G.z_dim)

    def cams(yaw: float, pitch: float) -> Tensor:
        return pose_to_cam2world(torch.full((latents,), yaw), torch.full((latents,), pitch), 0.0,
                                 cam.radius, tuple(cam.center))
    ws = G.mapping(z, None)
    front = G.render(ws, cams(0.0, 0.0))
    aux_cams = [cams(*pose) for pose in AUX_POSES]
    aux = [G.render_rays(ws, c) for c in aux_cams]
    start, end = G.cfg.ray_range
    k = front["k_rays"]
    feature_depth = plane_sweep_depth(front["features"], cams(0.0, 0.0), k, [a["features"] for a in aux], aux_cams,
                                      torch.linspace(start, end, SWEEP_PLANES))
    density_depth = front["depth_raw"]

    # The photometric loss as training computes it: renders with jittered samples, the checkpoint's density
    # noise and the light no sample stops lost (so a flat RGB head still shows the opacity).
    torch.manual_seed(seed + 1)
    train_front = G.render_rays(ws, cams(0.0, 0.0), noise_mode="random")
    train_aux = [G.render_rays(ws, c, noise_mode="random")["rgb_raw"] for c in aux_cams]

    def photometric(depth: Tensor) -> float:
        """MVCGAN's photometric loss between the frontal view's field RGB and each auxiliary view's, warped
        with ``depth``; mean over the views."""
        losses = []
        for rgb, c in zip(train_aux, aux_cams):
            warped, valid = backward_warp(rgb, depth, cams(0.0, 0.0), k, c, k)
            losses.append(float(photometric_loss((train_front["rgb_raw"] + 1) / 2, (warped + 1) / 2, valid)))
        return sum(losses) / len(losses)
    return {"feature_relief": round(float(relief(feature_depth).mean()), 4),
            "density_relief": round(float(relief(density_depth).mean()), 4),
            "feature_middle_depth": round(float(middle(feature_depth).mean()), 4),
            "density_middle_depth": round(float(middle(density_depth).mean()), 4),
            "density_on_feature_depth": relation(density_depth, feature_depth),
            # The field's own RGB, which only the photometric loss trains (as published): how much image it
            # holds, and whether that loss can tell the density's depth from a flat plane mid-range.
            "rgb_raw_contrast": round(float(train_front["rgb_raw"].flatten(2).std(2).mean()), 5),
            "photometric_at_density_depth": round(photometric(train_front["depth_raw"]), 6),
            "photometric_at_mid_plane": round(photometric(torch.full_like(density_depth, (start + end) / 2)), 6),
            "_maps": (front["image"], feature_depth, density_depth)}


def figure(maps: tuple[Tensor, Tensor, Tensor], near: float, far: float, title: str, path: Path) -> None:
    """Rows of latents: decoded image | feature depth | density depth (viridis over the ray range, near bright)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    image, feature_depth, density_depth = (m.cpu() for m in maps)
    rows = min(4, image.shape[0])
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows + 0.4), dpi=110, squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(((image[i].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
        for j, depth in ((1, feature_depth), (2, density_depth)):
            shown = axes[i, j].imshow(depth[i, 0].numpy(), cmap="viridis_r", vmin=near, vmax=far)
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    for j, name in enumerate(("decoded image", "feature depth (stereo)", "density depth")):
        axes[0, j].set_title(name, fontsize=8)
    fig.colorbar(shown, ax=axes, shrink=0.6, label="camera depth")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    from gmnr.models.factory import load_generator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `gmnr train` output folder (with checkpoints/step-*.pt)")
    parser.add_argument("--latents", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    checkpoints = sorted((args.run / "checkpoints").glob("step-*.pt"))
    if not checkpoints:
        raise SystemExit(f"{args.run}: no checkpoints/step-*.pt")
    if args.latents < 1:
        raise SystemExit("--latents must be positive")
    torch.set_num_threads(args.threads)
    by_step, last = {}, None
    for path in checkpoints:
        G, params, state = load_generator(path)
        G.eval()
        geometry = generator_geometry(G, params, args.latents)
        last = (geometry.pop("_maps"), G.cfg.ray_range, int(state["step"]))
        by_step[int(state["step"])] = geometry
        print(f"step {int(state['step'])}: {geometry}", flush=True)
    truth = demo_truth(last[0][1].shape[-1], params.seed)  # at the last checkpoint's ray resolution
    print(f"the demo heads themselves: {truth}", flush=True)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"mvcgan_geometry-{args.run.resolve().name}"
    stem.with_suffix(".json").write_text(json.dumps(
        {"run": args.run.resolve().name, "latents": args.latents, "aux_poses": AUX_POSES,
         "sweep_planes": SWEEP_PLANES, "demo_truth": truth, "by_step": by_step}, indent=2) + "\n")
    maps, (near, far), step = last
    figure(maps, near, far, f"{args.run.resolve().name}, step {step}: feature depth by multi-view stereo on the "
           "generator's features,\ndensity depth = its expected depth (what the depth video shows)",
           stem.with_suffix(".png"))
    print(f"wrote {stem}.json and .png", flush=True)


if __name__ == "__main__":
    main()
