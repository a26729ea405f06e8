import numpy as np
import pandas as pd
import pytest
import torch

from gmnr.data.face_layout import MEAN_LANDMARKS_3D
from gmnr.preprocess import pose
from gmnr.preprocess.landmarks import KEYPOINT_COLUMNS
from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world, project

CAMERA = pose.CameraModel(fov_deg=12.6, radius=1.0, center=(0.0, 0.0, 0.0))


def _landmark_rows(truth: list[tuple[float, float, float]], size=256, noise_px=0.0, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = intrinsics_from_fov(12.6, size, dtype=torch.float64)
    rows = []
    for i, (yaw, pitch, roll) in enumerate(truth):
        c2w = pose_to_cam2world(torch.tensor([yaw], dtype=torch.float64), torch.tensor([pitch], dtype=torch.float64),
                                roll, 1.0)
        uv, _ = project(torch.from_numpy(MEAN_LANDMARKS_3D)[None], c2w, k)
        pts = uv[0].numpy() + rng.normal(0, noise_px, (5, 2))
        rows.append({"file": f"{i:03d}.png", "status": "ok", "width": size, "height": size,
                     **dict(zip(KEYPOINT_COLUMNS, pts.ravel()))})
    return pd.DataFrame(rows)


def test_exact_landmarks_give_the_exact_pose():
    truth = [(0.0, 0.0, 0.0), (0.45, -0.2, 0.05), (-0.55, 0.22, -0.08), (0.25, 0.1, 0.0)]
    out = pose.builtin_poses(_landmark_rows(truth), CAMERA, max_reprojection_iod=0.05, progress=False)
    assert (out.status == "ok").all()
    est = out[["yaw", "pitch", "roll"]].to_numpy()
    assert np.abs(est - np.array(truth)).max() < 1e-6
    # the camera is re-seated on the dataset sphere: cam2world equals the analytic one
    c2w = out[pose.CAM2WORLD_COLUMNS].to_numpy().reshape(-1, 4, 4)
    expect = pose_to_cam2world(torch.tensor([t[0] for t in truth], dtype=torch.float64),
                               torch.tensor([t[1] for t in truth], dtype=torch.float64),
                               torch.tensor([t[2] for t in truth], dtype=torch.float64), 1.0).numpy()
    assert np.abs(c2w - expect).max() < 1e-6


def test_pixel_noise_moves_the_pose_by_a_few_degrees_at_most():
    rng = np.random.default_rng(3)
    truth = [(y, p, 0.0) for y, p in zip(rng.uniform(-0.5, 0.5, 40), rng.uniform(-0.25, 0.25, 40))]
    out = pose.builtin_poses(_landmark_rows(truth, noise_px=0.5), CAMERA, 0.2, progress=False)
    err = np.degrees(np.abs(out[["yaw", "pitch"]].to_numpy() - np.array(truth)[:, :2]))
    assert np.median(err) < 2.0, err


def test_rows_without_landmarks_keep_their_status_and_bad_fits_are_rejected():
    rows = _landmark_rows([(0.1, 0.0, 0.0), (0.0, 0.0, 0.0)])
    rows.loc[1, KEYPOINT_COLUMNS[4:6]] = [10.0, 10.0]  # a nose far outside the face
    rows = pd.concat([rows, pd.DataFrame([{"file": "x.png", "status": "no_face"}])], ignore_index=True)
    out = pose.builtin_poses(rows, CAMERA, max_reprojection_iod=0.05, progress=False)
    assert list(out.status) == ["ok", "pose_fit_failed", "no_face"]
    summary = pose.summarize(out)
    assert summary["poses_ok"] == 1 and summary["pose_fit_failed"] == 1 and summary["excluded_upstream"] == 1


def test_the_image_offset_absorbs_most_of_a_shifted_crop():
    """A crop 3 px (0.05 IOD) off-centre: with the offset term the angles move much less than
    when the look-at model must explain the shift by rotating the camera."""
    truth = [(0.3, -0.1, 0.0), (-0.2, 0.15, 0.0)]
    rows = _landmark_rows(truth)
    for axis in ("x", "y"):
        rows[[c for c in KEYPOINT_COLUMNS if c.endswith("_" + axis)]] += 3.0

    def error(shift_sigma):
        out = pose.builtin_poses(rows, CAMERA, 0.2, shift_sigma_iod=shift_sigma, progress=False)
        return np.degrees(np.abs(out[["yaw", "pitch"]].to_numpy() - np.array(truth)[:, :2])).max()
    with_offset, without = error(0.05), error(1e-4)
    print(f"max angle error from a 3 px shift: {with_offset:.2f} deg with the offset, {without:.2f} without")
    assert with_offset < 0.6 * without


@pytest.mark.parametrize("angle, expect", [((0.0, 0.3, 0.0), {"yaw": -0.3, "pitch": 0.0}),
                                           ((0.2, 0.0, 0.0), {"yaw": 0.0, "pitch": 0.2})])
def test_deep3d_angles_convert_to_our_camera(angle, expect):
    """A face turned by +y (towards image right) is a camera moved towards -x: yaw -y."""
    c2w = pose.deep3d_to_cam2world(np.array(angle), np.zeros(3))
    got = pose.pose_from_cam2world(c2w, CAMERA)
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, abs=1e-9)
    assert got["roll"] == pytest.approx(0.0, abs=1e-9)


def test_deep3d_adapter_runs_an_installation_and_reads_its_mat_files(tmp_path):
    """A stand-in installation with Deep3DFaceRecon's command line and output layout."""
    root = tmp_path / "Deep3DFaceRecon"
    (root / "BFM").mkdir(parents=True)
    (root / "test.py").write_text(
        "import sys, pathlib\n"
        "from scipy.io import savemat\n"
        "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
        "folder = pathlib.Path(args['img_folder'])\n"
        "out = pathlib.Path('checkpoints') / args['name'] / 'results' / folder.name / f\"epoch_{args['epoch']}_000000\"\n"
        "out.mkdir(parents=True, exist_ok=True)\n"
        "for txt in sorted((folder / 'detections').glob('*.txt')):\n"
        "    assert (folder / (txt.stem + '.png')).exists()\n"
        "    savemat(out / (txt.stem + '.mat'), {'angle': [[0.0, -0.2, 0.0]], 'trans': [[0.0, 0.0, 0.0]]})\n")
    images = tmp_path / "raw" / "images"
    images.mkdir(parents=True)
    from gmnr.data.images import write_png_atomic
    for name in ("000.png", "001.png"):  # the adapter writes what the one reader decodes
        write_png_atomic(images / name, np.zeros((8, 8, 3), np.uint8))
    rows = _landmark_rows([(0.0, 0.0, 0.0), (0.2, 0.0, 0.0)])
    rows.loc[1, "status"] = "no_face"
    out = pose.deep3d_poses(str(root), tmp_path / "raw", rows, CAMERA, tmp_path / "work")
    assert list(out.status) == ["ok", "no_face"]
    assert out.yaw[0] == pytest.approx(0.2) and out.pitch[0] == pytest.approx(0.0, abs=1e-9)


def test_deep3d_missing_installation_names_the_param(tmp_path):
    with pytest.raises(pose.PoseBackendError, match="pose.deep3dfacerecon_root is not set"):
        pose.check_deep3d_root(None)
    with pytest.raises(pose.PoseBackendError, match=r"pose.deep3dfacerecon_root=.*missing test.py, BFM"):
        pose.check_deep3d_root(str(tmp_path))
