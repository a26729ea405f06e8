"""FFHQ's alignment (gmnr/preprocess/align.py) against truth.

* The recipe's geometry: landmarks moved by any similarity (scale, rotation up to 20 degrees,
  translation) align to the same place, and that place is the one derived by hand from the recipe.
* The pixels: coloured dots drawn at a face's landmarks in a rotated, scaled photo land in the crop
  where the carried landmarks say (so the landmark files and the images agree).
* Skips: a face too small, cut by the border, or with a landmark outside the photo is skipped with its
  reason and nothing is written for it.
* The in-the-wild path end to end: demo heads with known pose pasted into larger photos (20-60 % of
  the width, rotated up to 20 degrees, another background), through `gmnr landmarks`, `gmnr align`
  and `gmnr pose`, compared with the same heads as rendered (already aligned).
"""
import json

import numpy as np
import pandas as pd
import pytest

from gmnr.data.face_layout import MEAN_LANDMARKS_3D
from gmnr.data.images import write_png_atomic
from gmnr.preprocess.align import AlignSettings, align_table, canonical_positions, crop_ffhq, ffhq_quad
from gmnr.preprocess.landmarks import COLUMNS, KEYPOINT_COLUMNS
from tests.conftest import env_with_venv, run_cli
from tests.wild_faces import make_heads, paste_in_the_wild

# The mean face seen frontally (image y down), in pixels of a 400 px photo: IOD 110 px.
FRONTAL = MEAN_LANDMARKS_3D[:, :2] * np.array([1.0, -1.0]) * 2000 + [200.0, 180.0]


def _similarity(rng, points, max_rotation_deg=20.0):
    theta = np.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    scale, shift = rng.uniform(0.3, 3.0), rng.uniform(-500, 500, 2)
    return points @ rot.T * scale + shift


def test_a_similarity_moves_nothing_in_the_aligned_crop():
    """align(T p) = align(p) for any similarity T: the crop undoes scale, rotation and translation."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        face = FRONTAL + rng.normal(0, 4, FRONTAL.shape)  # another person's proportions
        moved = _similarity(rng, face)
        # exact up to float rounding: 1e-9 of the crop side
        np.testing.assert_allclose(canonical_positions(moved), canonical_positions(face), atol=1e-9)


def test_canonical_positions_are_the_recipes():
    """Derived by hand from the recipe for a level face (eye line horizontal, mouth straight below): with
    eye distance d, eye-to-mouth m and 2d >= 1.8m, x = (2d, 0) and y = (0, 2d), the centre 0.1 m below
    the eyes, so the eyes sit at 0.5 -+ d/(4d) = 0.375 / 0.625 across and (1 - 0.1 m / 2d) / 2 down,
    the mouth at (1 + 0.9 m / 2d) / 2 down."""
    d = FRONTAL[1, 0] - FRONTAL[0, 0]
    m = FRONTAL[3, 1] - FRONTAL[0, 1]
    assert 2 * d >= 1.8 * m
    got = canonical_positions(FRONTAL)
    np.testing.assert_allclose(got[0], [0.375, (1 - 0.1 * m / (2 * d)) / 2], atol=1e-12)
    np.testing.assert_allclose(got[1], [0.625, (1 - 0.1 * m / (2 * d)) / 2], atol=1e-12)
    half_mouth = (FRONTAL[4, 0] - FRONTAL[3, 0]) / 2
    np.testing.assert_allclose(got[3], [0.5 - half_mouth / (4 * d), (1 + 0.9 * m / (2 * d)) / 2], atol=1e-12)
    # a face longer than wide: the crop is 1.8 x eye-to-mouth (the recipe's max), the eyes closer together
    long = FRONTAL.copy()
    long[2:, 1] += 0.6 * m
    q = ffhq_quad(long)
    assert q.qsize == pytest.approx(2 * 1.8 * np.hypot(0, 1.6 * m), rel=1e-9)


def _dot(point, width: int, height: int) -> np.ndarray:
    """A dark photo with one white Gaussian dot (sigma 3 px) at ``point``."""
    yy, xx = np.mgrid[:height, :width]
    w = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * 3.0 ** 2))
    return np.repeat(np.clip(np.rint(40 + 215 * w), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _centroid(crop: np.ndarray) -> np.ndarray:
    w = np.clip(crop[..., 0].astype(float) - 40, 0, None)
    yy, xx = np.mgrid[:crop.shape[0], :crop.shape[1]]
    return np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


@pytest.mark.parametrize("rotation", [-18.0, 0.0, 12.0])
def test_crop_pixels_land_where_the_carried_landmarks_say(rotation):
    """The image resampling (FFHQ's shrink, crop, QUAD transform, reduction) and the landmark formula
    agree: a dot drawn at each landmark has its centroid in the 128 px crop within 0.35 px of the carried
    landmark."""
    theta = np.radians(rotation)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = (FRONTAL - 200) @ rot.T * 1.7 + [300, 340]  # a face of IOD 187 px: the crop is shrunk first
    q = ffhq_quad(points)
    carried = q.to_crop(points, 128)
    for point, want in zip(points, carried):  # one photo per landmark, each cropped by the face's quad
        crop = crop_ffhq(_dot(point, 620, 700), q, AlignSettings(resolution=128))
        assert crop.shape == (128, 128, 3)
        found = _centroid(crop)
        assert np.abs(found - want).max() < 0.35, (found, want)


def _table(rows):
    table = pd.DataFrame([{c: np.nan for c in COLUMNS} | r for r in rows], columns=COLUMNS)
    return table


def _row(file, points, width, height):
    xs, ys = points[:, 0], points[:, 1]
    return {"file": file, "status": "ok", "error": "", "width": width, "height": height, "cropped": 0, "n_faces": 1,
            "confidence": 0.99, "x1": xs.min() - 20, "y1": ys.min() - 30, "x2": xs.max() + 20, "y2": ys.max() + 20,
            **dict(zip(KEYPOINT_COLUMNS, points.ravel()))}


def test_faces_too_small_or_cut_by_the_border_are_skipped_with_their_reason(tmp_path):
    settings = AlignSettings(resolution=64, min_eye_to_mouth_px=10.0, max_outside_fraction=0.25)
    small = (FRONTAL - 200) * 0.06 + [200, 200]          # eye-to-mouth 6.4 px
    # the crop square (4 IOD = 441 px, centred 11 px below the eyes) against the 400 px photo's border:
    corner = FRONTAL + [-140, 0]     # 0.36 of its side beyond the left edge, the landmarks inside
    outside = FRONTAL + [0, -175]    # the eyes above the top edge
    near = FRONTAL + [-80, 0]        # 0.23 of its side beyond: padded by reflection, kept
    good = FRONTAL
    rows = [_row("small.png", small, 400, 400), _row("corner.png", corner, 400, 400),
            _row("outside.png", outside, 400, 400), _row("near.png", near, 400, 400), _row("good.png", good, 400, 400),
            {"file": "blank.png", "status": "no_face", "error": "", "width": 400, "height": 400}]
    for r in rows:
        write_png_atomic(tmp_path / "raw" / "images" / r["file"], np.full((400, 400, 3), 128, np.uint8))
    out = tmp_path / "aligned"
    table = align_table(_table(rows), tmp_path / "raw", out, settings, progress=False).set_index("source_file")
    assert table.loc["small.png", "status"] == "face_too_small"
    assert "eye-to-mouth distance 6.4 px" in table.loc["small.png", "error"]
    assert table.loc["corner.png", "status"] == "cut_by_border"
    assert "beyond the image border" in table.loc["corner.png", "error"]
    assert table.loc["outside.png", "status"] == "cut_by_border"
    assert "landmarks lie outside" in table.loc["outside.png", "error"]
    assert table.loc["blank.png", "status"] == "no_face"  # upstream skips keep their status
    assert table.loc["near.png", "status"] == "ok" and 0 < table.loc["near.png", "outside_fraction"] <= 0.25
    assert table.loc["good.png", "status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "near.png"]  # nothing written for the skipped
    # the carried landmarks are the similarity's image of the detected ones
    q = ffhq_quad(good)
    carried = table.loc["good.png", KEYPOINT_COLUMNS].to_numpy(float).reshape(5, 2)
    np.testing.assert_allclose(carried, q.to_crop(good, 64), atol=1e-9)
    assert table.loc["good.png", "width"] == table.loc["good.png", "height"] == 64


# ------------------------------------------------------------------ the in-the-wild path, end to end
HEADS = 12
HEAD_RES = 128


@pytest.fixture(scope="module")
def wild_run(tmp_path_factory):
    """Demo heads and the same heads pasted in the wild, through landmarks (one MTCNN run over both),
    align (ffhq for the photos, off for the heads as rendered) and pose."""
    import time
    import shutil
    root = tmp_path_factory.mktemp("wild")
    truth = make_heads(root / "heads", HEADS, HEAD_RES, seed=3)
    wild = paste_in_the_wild(root / "heads", truth, root / "pasted", seed=1)
    # one photo folder, one MTCNN run: photos/images/wild/* (pasted) and photos/images/heads/* (as rendered)
    (root / "photos" / "images").mkdir(parents=True)
    shutil.move(root / "pasted" / "images", root / "photos" / "images" / "wild")
    shutil.copytree(root / "heads" / "images", root / "photos" / "images" / "heads")
    env = env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    seconds = {}
    start = time.perf_counter()
    done = run_cli("landmarks", "--input", str(root / "photos"), "--output", str(root / "lm"),
                   "--reports", str(root / "reports"), "--no-progress", "-S", "align.mode=ffhq", env=env)
    seconds["landmarks"] = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(root / "lm" / "landmarks.csv")
    for part, mode in (("wild", "ffhq"), ("heads", "off")):
        table[table.file.str.startswith(part + "/")].to_csv(root / f"lm_{part}.csv", index=False)
        start = time.perf_counter()
        done = run_cli("align", "--input", str(root / "photos"), "--landmarks", str(root / f"lm_{part}.csv"),
                       "--output", str(root / f"aligned_{part}"), "--reports", str(root / f"reports_{part}"),
                       "--no-progress", "-S", f"align.mode={mode}", "-S", f"align.resolution={HEAD_RES}", env=env)
        seconds[f"align {part}"] = time.perf_counter() - start
        assert done.returncode == 0, done.stderr[-3000:]
        start = time.perf_counter()
        # One estimator for both parts, the one for FFHQ-framed images (the wild photos after align): the
        # renders' own look-at settings read pose from where the face sits, which FFHQ's crop removes.
        done = run_cli("pose", "--input", str(root / f"aligned_{part}"), "--output", str(root / f"pose_{part}"),
                       "--reports", str(root / f"reports_{part}"), "--no-progress", "-S", f"align.mode={mode}",
                       "-S", "pose.framing=ffhq_crop", env=env)
        seconds[f"pose {part}"] = time.perf_counter() - start
        assert done.returncode == 0, done.stderr[-3000:]
    print("\nin-the-wild chain seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return root, truth, wild


def _pose_errors(root, part, truth) -> pd.DataFrame:
    poses = pd.read_csv(root / f"pose_{part}" / "poses.csv")
    poses = poses[poses.status == "ok"].assign(head=lambda t: t.file.str.split("/").str[-1])
    merged = poses.merge(truth[["file", "yaw", "pitch"]].rename(columns={"file": "head"}), on="head",
                         suffixes=("", "_gt"))
    return pd.DataFrame({"head": merged["head"], "yaw": np.degrees((merged.yaw - merged.yaw_gt).abs()),
                         "pitch": np.degrees((merged.pitch - merged.pitch_gt).abs())})


def test_in_the_wild_faces_align_to_ffhqs_positions_and_keep_their_pose(wild_run):
    root, truth, wild = wild_run
    assert wild.head_fraction.between(0.2, 0.6).all() and wild.rotation_deg.abs().max() <= 20
    aligned = pd.read_csv(root / "aligned_wild" / "landmarks.csv")
    report = json.loads((root / "reports_wild" / "align.json").read_text())
    ok = aligned[aligned.status == "ok"]
    # every photo whose face MTCNN found is aligned (none is too small or cut: the heads lie inside the photo)
    assert report["aligned"] == len(ok) >= HEADS - 1, report
    # 1. the crops' landmarks against the positions FFHQ's recipe maps each face's true landmarks to
    #    (fractions of the crop side): MTCNN's error is all that separates them
    true = wild.set_index("file").loc[ok.source_file.str.split("/").str[-1]]
    want = np.stack([canonical_positions(p) for p in true[KEYPOINT_COLUMNS].to_numpy(float).reshape(-1, 5, 2)])
    got = (ok[KEYPOINT_COLUMNS].to_numpy(float).reshape(-1, 5, 2) + 0.5) / HEAD_RES
    dist = np.hypot(*(got - want).transpose(2, 0, 1))
    # 2. ... and against FFHQ's canonical positions of the mean face (eyes 0.375 / 0.625 across, 0.476 down;
    #    mouth corners 0.386 / 0.614 across, 0.718 down): identity and pose move them a little
    mean = canonical_positions(FRONTAL)
    to_mean = np.hypot(*(got - mean).transpose(2, 0, 1))
    eyes_mouth = [0, 1, 3, 4]
    print(f"\naligned landmarks vs the recipe's position of the true landmarks (fraction of the crop): median "
          f"{np.median(dist):.4f}, max {dist.max():.4f}; vs the mean face's canonical positions, eyes and mouth: "
          f"median {np.median(to_mean[:, eyes_mouth]):.4f}, max {to_mean[:, eyes_mouth].max():.4f}")
    assert np.median(dist) <= 0.015 and dist.max() <= 0.05
    assert np.median(to_mean[:, eyes_mouth]) <= 0.03 and to_mean[:, eyes_mouth].max() <= 0.08
    # the crops themselves: square, at the requested size
    import imageio.v3 as iio
    assert all(iio.imread(root / "aligned_wild" / "images" / f).shape == (HEAD_RES, HEAD_RES, 3) for f in ok.file)
    # 3. pose against the truth, in the wild vs on the heads as rendered (the same 12 heads)
    wild_err, head_err = _pose_errors(root, "wild", truth), _pose_errors(root, "heads", truth)
    print(f"pose median |error| (deg), in the wild ({len(wild_err)} poses): yaw {wild_err.yaw.median():.2f}, pitch "
          f"{wild_err.pitch.median():.2f}; heads as rendered ({len(head_err)}): yaw {head_err.yaw.median():.2f}, "
          f"pitch {head_err.pitch.median():.2f}")
    assert len(wild_err) >= HEADS - 2
    # FFHQ's crop centres every face on its eyes and mouth while the renders keep the look-at camera's
    # placement (the face moves with yaw); the FFHQ-framing estimator does not read pose from where the face
    # sits (pose.shift_sigma_iod free), so the crop costs little: tolerance 2 degrees over the rendered heads'
    # median. Measured (mirror-averaged MTCNN): yaw 1.6 vs 1.0, pitch 5.1 vs 4.2. The absolute bound is loose for pitch: 12 heads
    # at 128 px, and MTCNN's 5 points carry little pitch (calibration slope 0.50, so its scatter doubles;
    # the demo's 198 heads at 256 px: 4.1 degrees median, benchmarks/pose_framing.py).
    for angle in ("yaw", "pitch"):
        assert wild_err[angle].median() <= head_err[angle].median() + 2.0, (wild_err, head_err)
        assert wild_err[angle].median() <= 8.0
