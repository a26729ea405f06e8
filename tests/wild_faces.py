"""Demo heads with known pose, and the same heads pasted into larger photos: in-the-wild faces with truth.

The heads are the procedural demo's (:func:`gmnr.data.synth.generate`: ground_truth.csv holds each
head's yaw, pitch and projected landmarks). :func:`paste_in_the_wild` puts each head into a canvas of
another size and aspect (portrait), on a background of other colours, at a random position, scale and
in-plane rotation, and records where its true landmarks went: what FFHQ's alignment must undo.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gmnr.data.face_layout import LANDMARK_NAMES

TRUTH_COLUMNS = [f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y")]


def make_heads(out: Path, count: int, resolution: int, seed: int = 0) -> pd.DataFrame:
    """``count`` demo heads under ``out/images`` at the FFHQ camera's pose prior; their ground truth."""
    from gmnr.config import load_params
    from gmnr.data import synth
    cam = load_params().cameras["ffhq"]
    camera = synth.SynthCamera(fov_deg=cam.fov_deg, radius=cam.radius, yaw_std=cam.yaw_std,
                               pitch_std=cam.pitch_std, truncation=cam.truncation)
    synth.generate(out, count, resolution, seed, camera, roll_std=0.03, progress=False)
    return pd.read_csv(out / "ground_truth.csv")


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth two-colour gradient with noise: nothing like the demo's flat backdrop."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, height)[:, None, None] * rng.uniform(0.3, 1) + \
        np.linspace(0, 1, width)[None, :, None] * rng.uniform(0, 0.7)
    img = a + (b - a) * np.clip(t, 0, 1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def paste_in_the_wild(heads: Path, truth: pd.DataFrame, out: Path, seed: int = 1,
                      width_fraction: tuple[float, float] = (0.2, 0.6), max_rotation_deg: float = 20.0) -> pd.DataFrame:
    """Paste every head of ``heads/images`` into a photo under ``out/images`` (the head square spans
    ``width_fraction`` of the photo's width, rotated in-plane by up to ``max_rotation_deg``) and return
    the truth: file, yaw, pitch, rotation, scale and the landmarks in the photo (pixel-index coordinates)."""
    from PIL import Image

    from gmnr.data.images import read_rgb, write_png_atomic
    rng = np.random.default_rng(seed)
    rows = []
    for _, row in truth.iterrows():
        head = read_rgb(heads / "images" / row.file)
        r = head.shape[0]
        fraction = rng.uniform(*width_fraction)
        scale = rng.uniform(0.8, 1.25)
        width = int(round(scale * r / fraction))
        height = int(round(width * rng.uniform(1.0, 1.3)))
        theta = np.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        # The rotated head square's half extent; its centre is placed so the square stays in the photo.
        half = scale * r / 2 * (abs(np.cos(theta)) + abs(np.sin(theta)))
        centre = np.array([rng.uniform(half, width - half), rng.uniform(half, height - half)])
        # Forward map (continuous coordinates, pixel edges at integers): q = scale R (p - r/2) + centre.
        inverse = rot.T / scale
        offset = r / 2 - inverse @ centre
        data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
        pasted = Image.fromarray(head).transform((width, height), Image.Transform.AFFINE, data,
                                                 Image.Resampling.BICUBIC)
        mask = Image.new("L", (r, r), 255).transform((width, height), Image.Transform.AFFINE, data,
                                                     Image.Resampling.BILINEAR)
        canvas = Image.fromarray(_background(rng, width, height))
        canvas.paste(pasted, (0, 0), mask)
        name = Path(row.file).with_suffix(".png").name
        write_png_atomic(out / "images" / name, np.asarray(canvas))
        points = row[TRUTH_COLUMNS].to_numpy(float).reshape(5, 2)
        moved = ((points + 0.5 - r / 2) @ rot.T) * scale + centre - 0.5
        rows.append({"file": name, "yaw": row.yaw, "pitch": row.pitch, "rotation_deg": np.degrees(theta),
                     "scale": scale, "head_fraction": scale * r / width, "width": width, "height": height,
                     **dict(zip(TRUTH_COLUMNS, moved.ravel()))})
    return pd.DataFrame(rows)
