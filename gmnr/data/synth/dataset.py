"""The demo dataset on disk: camera prior, per-image sampling, and the files ``generate`` writes.

``out_dir`` receives ``images/NNNNNN.png``, ``depth/NNNNNN.npy`` (float32 camera-space z, 0 on
the background), ``ground_truth.csv`` (pose and projected 2D landmarks per image, see
:func:`csv_columns`) and ``meta.json`` (the conventions). Image ``i`` is a function of
``(seed, i)`` only, so a larger count adds images without changing the earlier ones.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from gmnr.data.face_layout import LANDMARK_NAMES
from gmnr.io import atomic_write
from gmnr.data.synth.head import head_landmarks_3d
from gmnr.data.synth.sampling import sample_head
from gmnr.data.synth.tracer import render_head
from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world, project, sample_pose_prior


@dataclass(frozen=True)
class SynthCamera:
    """Camera model and pose prior of the synthetic data (GMPI's FFHQ values in FFHQ_CAMERA)."""

    fov_deg: float
    radius: float
    yaw_std: float
    pitch_std: float
    truncation: float


FFHQ_CAMERA = SynthCamera(fov_deg=12.6, radius=1.0, yaw_std=0.289, pitch_std=0.127, truncation=2.0)


def sample_view(seed: int, index: int, camera: SynthCamera, roll_std: float) -> dict:
    """Identity seed and camera pose of image ``index``: a function of (seed, index) only."""
    rng = np.random.default_rng([seed, index])
    identity_seed = int(rng.integers(0, 2 ** 31))
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 62)))
    pose = sample_pose_prior(1, camera.yaw_std, camera.pitch_std, camera.truncation,
                             generator=gen, dtype=torch.float64)
    roll = float(rng.normal(0.0, roll_std)) if roll_std > 0 else 0.0
    return dict(identity_seed=identity_seed, yaw=float(pose["yaw"][0]),
                pitch=float(pose["pitch"][0]), roll=roll)


def render_view(seed: int, index: int, resolution: int, camera: SynthCamera,
                roll_std: float) -> dict:
    """Render image ``index``; returns the render dict plus pose, head and 2D landmarks [5, 2]."""
    view = sample_view(seed, index, camera, roll_std)
    head = sample_head(np.random.default_rng(view["identity_seed"]))
    cam2world = pose_to_cam2world(torch.tensor([view["yaw"]], dtype=torch.float64),
                                  view["pitch"], view["roll"], radius=camera.radius)
    k = intrinsics_from_fov(camera.fov_deg, resolution, dtype=torch.float64)
    uv, _ = project(torch.from_numpy(head_landmarks_3d(head))[None], cam2world, k)
    out = render_head(head, cam2world[0].float(), k.float(), resolution, resolution)
    return dict(out, **view, head=head, landmarks_2d=uv[0].numpy(), radius=camera.radius)


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """``write(f)`` into a binary file that appears at ``path`` whole (gmnr.io.atomic_write; a temporary
    per process, as before)."""
    def write_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)
    atomic_write(path, write_file, tmp_name=f".{path.name}.tmp{os.getpid()}")


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import imageio.v3 as iio

    _atomic_write(path, lambda f: f.write(iio.imwrite("<bytes>", rgb, extension=".png")))


def csv_columns() -> list[str]:
    """Columns of ground_truth.csv."""
    cols = ["file", "yaw", "pitch", "roll", "radius", "identity_seed"]
    return cols + [f"{name}_{axis}" for name in LANDMARK_NAMES for axis in ("x", "y")]


def _meta(count: int, resolution: int, seed: int, camera: SynthCamera, roll_std: float) -> dict:
    return dict(
        generator="gmnr.data.synth", count=count, resolution=resolution, seed=seed,
        roll_std=roll_std, camera=dataclasses.asdict(camera), landmark_names=list(LANDMARK_NAMES),
        conventions=dict(
            pose="camera yaw/pitch/roll in radians as in gmnr.render.camera: yaw > 0 moves the "
                 "camera towards world +x, pitch > 0 above the face, roll about the optical axis",
            camera_frame="OpenCV (x right, y down, z forward); look-at the world origin",
            intrinsics="fov_deg is the full horizontal field of view; square pixels",
            landmarks="pixel coordinates with pixel centres at i + 0.5; 'left' = smaller image x",
            depth="float32 camera-space z in world units, 0 where background",
            determinism="image i depends only on (seed, i) via numpy.random.default_rng([seed, i])",
        ))


def generate(out_dir: Path, count: int, resolution: int, seed: int, camera: SynthCamera,
             roll_std: float, progress: bool = True, num_threads: int | None = None) -> dict:
    """Write ``count`` images, depth maps, ground_truth.csv and meta.json under ``out_dir``.

    ``num_threads`` (optional) is passed to torch.set_num_threads for the duration of the
    call; by default the caller's setting is used. The four outputs are built in a staging folder
    and swapped in together (:mod:`gmnr.staging`): an interrupted run leaves the previous set
    whole, a rerun with a smaller count leaves no older image behind, and an ``out_dir`` that
    holds files synth did not write (someone's photos in ``images/``) is refused before any
    rendering. Returns count, seconds, seconds_per_image.
    """
    from gmnr.staging import StagedOutput
    if count < 0 or resolution <= 0:
        raise ValueError(f"need count >= 0 and resolution > 0, got {count}, {resolution}")
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with StagedOutput(out_dir, "synth", OUTPUTS, legacy=_legacy_claims) as staged:
            return _generate(staged.staging / "new", count, resolution, seed, camera, roll_std, progress)
    finally:
        torch.set_num_threads(previous_threads)


OUTPUTS = ("images", "depth", "ground_truth.csv", "meta.json")


def _legacy_claims(out_dir: Path) -> set[str] | None:
    """What a synth run from before output records can be shown to have written (its meta.json)."""
    meta = json.loads((Path(out_dir) / "meta.json").read_text())
    if meta.get("generator") != "gmnr.data.synth":
        return None
    n = int(meta["count"])
    return {"ground_truth.csv", "meta.json", *(f"images/{i:06d}.png" for i in range(n)),
            *(f"depth/{i:06d}.npy" for i in range(n))}


def _generate(out_dir: Path, count: int, resolution: int, seed: int, camera: SynthCamera,
              roll_std: float, progress: bool) -> dict:
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    rows = []
    start = time.perf_counter()
    for i in tqdm(range(count), desc="synth", disable=not progress):
        r = render_view(seed, i, resolution, camera, roll_std)
        name = f"{i:06d}.png"
        _write_png(out_dir / "images" / name, r["rgb"])
        _atomic_write(out_dir / "depth" / f"{i:06d}.npy", lambda f: np.save(f, r["depth"]))
        lm = r["landmarks_2d"]
        rows.append([name, repr(r["yaw"]), repr(r["pitch"]), repr(r["roll"]), repr(r["radius"]),
                     r["identity_seed"]] + [repr(float(v)) for v in lm.reshape(-1)])
    seconds = time.perf_counter() - start

    def write_csv(f):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(csv_columns())
        writer.writerows(rows)
        f.write(text.getvalue().encode())

    _atomic_write(out_dir / "ground_truth.csv", write_csv)
    meta = _meta(count, resolution, seed, camera, roll_std)
    _atomic_write(out_dir / "meta.json",
                  lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode()))
    return dict(count=count, seconds=seconds, seconds_per_image=seconds / max(count, 1))


def contact_sheet(images: list[np.ndarray], ncols: int, pad: int = 2) -> np.ndarray:
    """Grid [rows*(H+pad)+pad, ncols*(W+pad)+pad, 3] uint8 of equally sized images."""
    assert images, "contact_sheet needs at least one image"
    h, w = images[0].shape[:2]
    for im in images:
        assert im.shape == (h, w, 3) and im.dtype == np.uint8, "images must be HxWx3 uint8, same size"
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    sheet = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y0:y0 + h, x0:x0 + w] = im
    return sheet
