"""Tests for the procedural demo dataset (gmnr.data.synth).

The renderer is checked against independent geometry: analytic projection of the
ground-truth landmarks (gmnr.render.camera.project) versus what sphere tracing found.
"""
import csv
import json

import numpy as np
import pytest
import torch

from gmnr.data import synth
from gmnr.data.face_layout import IOD, LANDMARK_NAMES, MEAN_LANDMARKS_3D
from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world, project

RES = 64
CAM = synth.FFHQ_CAMERA


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # small renders: one thread is fastest and immune to CPU contention
    yield
    torch.set_num_threads(previous)


def _view(head, yaw=0.0, pitch=0.0, roll=0.0, res=RES, intrinsics=None):
    cam2world = pose_to_cam2world(torch.tensor([yaw], dtype=torch.float64), pitch, roll,
                                  radius=CAM.radius)
    k = intrinsics_from_fov(CAM.fov_deg, res, dtype=torch.float64) if intrinsics is None else intrinsics
    uv, z = project(torch.from_numpy(synth.head_landmarks_3d(head))[None], cam2world, k)
    out = synth.render_head(head, cam2world[0].float(), k.float(), res, res)
    return out, uv[0].numpy(), z[0].numpy()


def _pixel(uv):
    return int(np.floor(uv[1])), int(np.floor(uv[0]))


def test_render_view_is_deterministic_and_seed_dependent():
    a = synth.render_view(3, 5, RES, CAM, 0.03)
    b = synth.render_view(3, 5, RES, CAM, 0.03)
    assert np.array_equal(a["rgb"], b["rgb"]) and np.array_equal(a["depth"], b["depth"])
    assert a["identity_seed"] == b["identity_seed"] and a["yaw"] == b["yaw"]
    c = synth.render_view(4, 5, RES, CAM, 0.03)
    assert not np.array_equal(a["rgb"], c["rgb"])


def test_sample_view_follows_the_truncated_prior():
    views = [synth.sample_view(0, i, CAM, 0.03) for i in range(300)]
    yaw = np.array([v["yaw"] for v in views])
    pitch = np.array([v["pitch"] for v in views])
    assert np.abs(yaw).max() <= CAM.truncation * CAM.yaw_std + 1e-9
    assert np.abs(pitch).max() <= CAM.truncation * CAM.pitch_std + 1e-9
    assert 0.6 * CAM.yaw_std < yaw.std() < 1.1 * CAM.yaw_std
    assert abs(np.mean([v["roll"] for v in views])) < 0.01


def test_generate_writes_consistent_files_and_count_does_not_change_earlier_images(tmp_path):
    s2 = synth.generate(tmp_path / "two", 2, RES, seed=7, camera=CAM, roll_std=0.03, progress=False)
    synth.generate(tmp_path / "three", 3, RES, seed=7, camera=CAM, roll_std=0.03, progress=False,
                   num_threads=1)
    assert torch.get_num_threads() == 1
    assert s2["count"] == 2 and s2["seconds_per_image"] > 0
    for i in range(2):
        for sub, name in (("images", f"{i:06d}.png"), ("depth", f"{i:06d}.npy")):
            assert (tmp_path / "two" / sub / name).read_bytes() == (tmp_path / "three" / sub / name).read_bytes()

    import imageio.v3 as iio

    out = tmp_path / "three"
    with open(out / "ground_truth.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == synth.csv_columns()
    assert reader.fieldnames[:6] == ["file", "yaw", "pitch", "roll", "radius", "identity_seed"]
    assert [f"{n}_{a}" for n in LANDMARK_NAMES for a in "xy"] == reader.fieldnames[6:]
    assert [r["file"] for r in rows] == ["000000.png", "000001.png", "000002.png"]
    with open(tmp_path / "two" / "ground_truth.csv", newline="") as f:
        assert list(csv.DictReader(f)) == rows[:2]
    for r in rows:
        rgb = iio.imread(out / "images" / r["file"])
        depth = np.load(out / "depth" / r["file"].replace(".png", ".npy"))
        assert rgb.shape == (RES, RES, 3) and rgb.dtype == np.uint8
        assert depth.shape == (RES, RES) and depth.dtype == np.float32
        uv = np.array([float(r[c]) for c in synth.csv_columns()[6:]]).reshape(5, 2)
        assert ((uv > 0) & (uv < RES)).all()
        assert float(r["radius"]) == CAM.radius
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 3 and meta["resolution"] == RES and meta["seed"] == 7
    assert meta["camera"]["fov_deg"] == CAM.fov_deg and "conventions" in meta
    assert not list(out.rglob("*.tmp*"))


def test_landmarks_are_the_mean_layout_with_modest_variation_and_lie_on_the_surface():
    for seed in range(6):
        head = synth.sample_head(np.random.default_rng(seed))
        lm = synth.head_landmarks_3d(head)
        assert lm.shape == (5, 3)
        assert np.abs(lm - MEAN_LANDMARKS_3D).max() < 0.15 * IOD
        local = torch.tensor(synth._local_landmarks(head).T, dtype=torch.float32)
        assert synth.HeadSDF(head)(local).abs().max() < 1e-3  # local units (IOD)


def test_nose_tip_landmark_is_the_most_forward_point_of_the_nose():
    head = synth.sample_head(np.random.default_rng(11))
    sdf = synth.HeadSDF(head)
    xs, ys = np.meshgrid(np.linspace(-0.12, 0.12, 13), -head.nose_y + np.linspace(-0.12, 0.2, 17))
    x = torch.tensor(xs.ravel(), dtype=torch.float32)
    y = torch.tensor(ys.ravel(), dtype=torch.float32)
    z = torch.full_like(x, 1.5)
    for _ in range(80):  # trace towards -z to find the front-most surface at each (x, y)
        z = z - sdf(torch.stack([x, y, z]))
    best = int(torch.argmax(z))
    assert abs(float(x[best])) < 1e-6 and abs(float(y[best]) + head.nose_y) < 1e-6
    assert abs(float(z[best]) - head.nose_z) < 2e-3


def test_frontal_view_landmarks_are_inside_the_mask_visible_and_symmetric():
    head = synth.sample_head(np.random.default_rng(2))
    out, uv, z = _view(head, res=96)
    for (u, v), zc in zip(uv, z):
        r, c = _pixel((u, v))
        assert out["mask"][r, c]
        # Visible: the surface seen at that pixel is the landmark itself (within a pixel's slope).
        assert abs(out["depth"][r, c] - zc) < 0.004
    left_eye, right_eye, nose, mouth_left, mouth_right = uv
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_left[0] < nose[0] < mouth_right[0]
    assert abs(0.5 * (left_eye[0] + right_eye[0]) - nose[0]) < 0.1
    assert abs(left_eye[1] - right_eye[1]) < 0.1
    assert left_eye[1] < nose[1] < mouth_left[1]


@pytest.mark.parametrize("yaw,pitch", [(0.0, 0.0), (0.35, -0.12)])
def test_depth_at_nose_tip_matches_the_analytic_projection(yaw, pitch):
    head = synth.sample_head(np.random.default_rng(5))
    res = 64
    k = intrinsics_from_fov(CAM.fov_deg, res, dtype=torch.float64)
    cam2world = pose_to_cam2world(torch.tensor([yaw], dtype=torch.float64), pitch, 0.0)
    uv, _ = project(torch.from_numpy(synth.head_landmarks_3d(head))[None], cam2world, k)
    # Move the principal point so the nose tip projects exactly onto a pixel centre.
    frac = uv[0, 2] - torch.floor(uv[0, 2]) - 0.5
    k[0, 2] -= frac[0]
    k[1, 2] -= frac[1]
    out, uv, z = _view(head, yaw, pitch, res=res, intrinsics=k)
    r, c = _pixel(uv[2])
    assert abs(uv[2][0] - (c + 0.5)) < 1e-6 and abs(uv[2][1] - (r + 0.5)) < 1e-6
    assert abs(out["depth"][r, c] - z[2]) < 2e-4  # world units; the camera is ~0.95 away


def test_yaw_sign_convention():
    """yaw > 0 moves the camera towards world +x (camera.py). The nose tip is nearer to the
    camera than the eyes, so parallax moves it towards image -x: left of the eye midpoint."""
    head = synth.sample_head(np.random.default_rng(8))
    for yaw, sign in ((0.4, -1.0), (-0.4, 1.0)):
        out, uv, _ = _view(head, yaw)
        eye_mid = 0.5 * (uv[0, 0] + uv[1, 0])
        assert sign * (uv[2, 0] - eye_mid) > 1.0  # pixels at 64 px
        # The rendered head agrees: more of it shows on the side the camera moved to
        # (image +x for yaw > 0) relative to the nose.
        cols = np.nonzero(out["mask"].any(0))[0]
        centre = 0.5 * (cols.min() + cols.max() + 1)
        assert sign * (uv[2, 0] - centre) > 0


def test_background_has_zero_depth_and_the_head_is_at_camera_distance():
    head = synth.sample_head(np.random.default_rng(1))
    out, _, _ = _view(head, 0.2, 0.1)
    assert out["rgb"].shape == (RES, RES, 3) and out["rgb"].dtype == np.uint8
    assert out["depth"].dtype == np.float32 and out["mask"].dtype == bool
    assert (out["depth"][~out["mask"]] == 0).all()
    assert (~out["mask"]).any() and out["mask"].mean() > 0.3
    face = out["depth"][out["mask"]]
    assert face.min() > 0.85 and face.max() < 1.2


def test_contact_sheet_layout():
    ims = [np.full((8, 10, 3), i * 40, dtype=np.uint8) for i in range(5)]
    sheet = synth.contact_sheet(ims, ncols=3, pad=2)
    assert sheet.shape == (2 * 10 + 2, 3 * 12 + 2, 3)
    assert (sheet[2:10, 2:12] == 0).all() and (sheet[12:20, 14:24] == 160).all()
