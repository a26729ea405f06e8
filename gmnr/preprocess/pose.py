"""Head pose per image, behind one interface with two back ends.

* ``builtin`` (offline): the 5 MTCNN landmarks against the mean 3D face layout
  (:mod:`gmnr.data.face_layout`), solved as a perspective-n-point problem with the dataset
  camera's intrinsics by Levenberg-Marquardt from several starting poses.
* ``deep3dfacerecon``: runs the GMPI fork of Deep3DFaceRecon on the images and their keypoint
  files and converts its face rotation into our camera convention.

Output per image (``poses.csv``): yaw, pitch, roll (radians, camera angles as documented in
:mod:`gmnr.render.camera`), the estimated camera position (``tx, ty, tz``, world units of the
mean face), the reprojection error, and ``cam2world_00..33``: the camera placed on the dataset's
sphere (radius, look-at centre) with the estimated angles, which is what the trainer reads.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gmnr.data.face_layout import MEAN_LANDMARKS_3D

CAM2WORLD_COLUMNS = [f"cam2world_{i}{j}" for i in range(4) for j in range(4)]
POSE_COLUMNS = ["file", "status", "yaw", "pitch", "roll", "tx", "ty", "tz", "reprojection_iod", *CAM2WORLD_COLUMNS]


class PoseBackendError(RuntimeError):
    pass


# ---------------------------------------------------------------- rotations (numpy, float64)
def rodrigues(rvec: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] from an axis-angle vector [3]."""
    theta = float(np.linalg.norm(rvec))
    if theta < 1e-12:
        return np.eye(3)
    k = rvec / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def rotation_log(r: np.ndarray) -> np.ndarray:
    """Axis-angle vector [3] of a rotation matrix (inverse of :func:`rodrigues`)."""
    cos = np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(cos)
    if theta < 1e-9:
        return np.zeros(3)
    if np.pi - theta < 1e-6:  # near 180 deg: axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(r) + 1) / 2, 0, None))
        axis *= np.sign(np.array([1.0, *np.sign(r[0, 1:] + 1e-12)]))
        return axis / np.linalg.norm(axis) * theta
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2 * np.sin(theta))
    return w * theta


# ---------------------------------------------------------------- PnP
def _project(params: np.ndarray, points: np.ndarray, k: np.ndarray) -> np.ndarray:
    cam = points @ rodrigues(params[:3]).T + params[3:]
    uv = cam @ k.T
    return uv[:, :2] / uv[:, 2:3]


def solve_pnp(points_3d: np.ndarray, points_2d: np.ndarray, k: np.ndarray, init_world2cam: list[np.ndarray],
              iterations: int = 60) -> tuple[np.ndarray, float]:
    """World-to-camera [4, 4] minimising the pixel reprojection error, and its RMS (pixels).

    Levenberg-Marquardt over (axis-angle, translation) from each starting pose; the best fit
    wins. Several starts guard against the mirror ambiguity of nearly planar point sets.
    """
    assert points_3d.shape == (len(points_2d), 3) and points_2d.shape[1] == 2 and len(points_2d) >= 4
    best, best_err = None, np.inf
    for init in init_world2cam:
        x = np.concatenate([rotation_log(init[:3, :3]), init[:3, 3]])
        lam = 1e-3
        r = (_project(x, points_3d, k) - points_2d).ravel()
        for _ in range(iterations):
            jac = np.empty((r.size, 6))
            for j in range(6):
                step = np.zeros(6)
                step[j] = 1e-6 if j < 3 else 1e-7
                jac[:, j] = ((_project(x + step, points_3d, k) - points_2d).ravel() - r) / step[j]
            a = jac.T @ jac
            g = jac.T @ r
            dx = -np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), g)
            r_new = (_project(x + dx, points_3d, k) - points_2d).ravel()
            if r_new @ r_new < r @ r:
                x, r, lam = x + dx, r_new, lam * 0.3
                if np.abs(dx).max() < 1e-10:
                    break
            else:
                lam *= 10
                if lam > 1e8:
                    break
        err = float(np.sqrt(np.mean(np.sum(r.reshape(-1, 2) ** 2, axis=1))))
        in_front = (points_3d @ rodrigues(x[:3]).T + x[3:])[:, 2].min() > 0
        if err < best_err and in_front:
            best, best_err = x, err
    if best is None:
        raise PoseBackendError("PnP found no pose with all points in front of the camera")
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rodrigues(best[:3]), best[3:]
    return m, best_err


@dataclass(frozen=True)
class CameraModel:
    """The dataset camera the poses are expressed in (from params ``cameras.<family>``)."""
    fov_deg: float
    radius: float
    center: tuple[float, float, float]


def _initial_poses(camera: CameraModel) -> list[np.ndarray]:
    import torch

    from gmnr.render.camera import pose_to_cam2world
    yaws, pitches = np.array([-0.7, 0.0, 0.7]), np.array([-0.3, 0.0, 0.3])
    yy, pp = np.meshgrid(yaws, pitches)
    c2w = pose_to_cam2world(torch.tensor(yy.ravel(), dtype=torch.float64), torch.tensor(pp.ravel(), dtype=torch.float64),
                            0.0, camera.radius, camera.center)
    return list(torch.linalg.inv(c2w).numpy())


def pose_from_cam2world(cam2world: np.ndarray, camera: CameraModel) -> dict:
    """Angles of an estimated camera, and the camera re-seated on the dataset's sphere."""
    import torch

    from gmnr.render.camera import cam2world_to_pose, pose_to_cam2world
    angles = {k: float(v[0]) for k, v in
              cam2world_to_pose(torch.from_numpy(cam2world[None]), camera.center).items()}
    seated = pose_to_cam2world(torch.tensor([angles["yaw"]], dtype=torch.float64),
                               torch.tensor([angles["pitch"]], dtype=torch.float64),
                               torch.tensor([angles["roll"]], dtype=torch.float64),
                               camera.radius, camera.center)[0].numpy()
    out = {"yaw": angles["yaw"], "pitch": angles["pitch"], "roll": angles["roll"],
           "tx": float(cam2world[0, 3]), "ty": float(cam2world[1, 3]), "tz": float(cam2world[2, 3])}
    out.update(dict(zip(CAM2WORLD_COLUMNS, seated.ravel().tolist())))
    return out


def builtin_poses(landmarks: pd.DataFrame, camera: CameraModel, max_reprojection_iod: float,
                  progress: bool = True) -> pd.DataFrame:
    """PnP pose for every ``ok`` row of a landmarks table; other rows keep their status."""
    from tqdm import tqdm

    from gmnr.preprocess.landmarks import keypoints_array
    from gmnr.render.camera import intrinsics_from_fov

    inits = _initial_poses(camera)
    rows = []
    for _, row in tqdm(landmarks.iterrows(), total=len(landmarks), desc="pose (PnP)", unit="img",
                       disable=not progress):
        if row.status != "ok":
            rows.append({"file": row.file, "status": row.status})
            continue
        k = intrinsics_from_fov(camera.fov_deg, int(row.width), int(row.height), dtype=None).double().numpy()
        pts = keypoints_array(row)
        world2cam, rms = solve_pnp(MEAN_LANDMARKS_3D, pts, k, inits)
        iod_px = float(np.linalg.norm(pts[1] - pts[0]))
        reproj = rms / max(iod_px, 1e-6)
        status = "ok" if reproj <= max_reprojection_iod else "pose_fit_failed"
        rows.append({"file": row.file, "status": status, "reprojection_iod": reproj,
                     **pose_from_cam2world(np.linalg.inv(world2cam), camera)})
    return pd.DataFrame(rows, columns=POSE_COLUMNS)


# ---------------------------------------------------------------- Deep3DFaceRecon adapter
def _euler_face_rotation(angle: np.ndarray) -> np.ndarray:
    """Deep3DFaceRecon's face rotation R = Rz Ry Rx from its (x, y, z) angles (column vectors)."""
    x, y, z = angle
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def deep3d_to_cam2world(angle: np.ndarray, trans: np.ndarray, camera_distance: float = 10.0) -> np.ndarray:
    """Our OpenCV cam2world in the face's frame from Deep3DFaceRecon's angle and translation.

    Deep3DFaceRecon keeps the camera fixed at (0, 0, camera_distance) looking down -z (OpenGL
    axes: x right, y up) and rotates/translates the face. Expressed in the face's own frame the
    camera is at R^T (c - t) with axes R^T diag(1, -1, -1) (OpenGL -> OpenCV).
    """
    r = _euler_face_rotation(np.asarray(angle, dtype=np.float64).ravel())
    m = np.eye(4)
    m[:3, :3] = r.T @ np.diag([1.0, -1.0, -1.0])
    m[:3, 3] = r.T @ (np.array([0.0, 0.0, camera_distance]) - np.asarray(trans, dtype=np.float64).ravel())
    return m


def check_deep3d_root(root: str | None) -> Path:
    if not root:
        raise PoseBackendError("pose.backend is 'deep3dfacerecon' but pose.deep3dfacerecon_root is not set; "
                               "set it to your checkout of the GMPI fork of Deep3DFaceRecon_pytorch")
    path = Path(root).expanduser()
    missing = [p for p in ("test.py", "BFM") if not (path / p).exists()]
    if missing:
        raise PoseBackendError(f"pose.deep3dfacerecon_root={root}: not a Deep3DFaceRecon installation "
                               f"(missing {', '.join(missing)}; it needs test.py, BFM/ and checkpoints/)")
    return path


def deep3d_poses(root: str | None, image_dir: Path, landmarks: pd.DataFrame, camera: CameraModel,
                 work_dir: Path, name: str = "pretrained", epoch: int = 20) -> pd.DataFrame:
    """Run Deep3DFaceRecon's ``test.py`` on the images with ``ok`` landmarks and read its .mat files."""
    from scipy.io import loadmat

    from gmnr.data.images import image_root
    from gmnr.preprocess.landmarks import export_keypoint_txt

    root_path = check_deep3d_root(root)
    folder = (work_dir / "deep3d_input").resolve()
    shutil.rmtree(folder, ignore_errors=True)
    ok = landmarks[landmarks.status == "ok"]
    for file in ok.file:
        target = folder / Path(file).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image_root(image_dir) / file, target)
    export_keypoint_txt(ok.assign(file=[Path(f).name for f in ok.file]), folder / "detections")
    cmd = [sys.executable, "test.py", f"--name={name}", f"--epoch={epoch}", f"--img_folder={folder}"]
    done = subprocess.run(cmd, cwd=root_path, capture_output=True, text=True)
    if done.returncode != 0:
        raise PoseBackendError(f"Deep3DFaceRecon failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    results = root_path / "checkpoints" / name / "results" / folder.name / f"epoch_{epoch}_000000"
    rows = []
    for _, row in landmarks.iterrows():
        mat = results / (Path(row.file).stem + ".mat")
        if row.status != "ok" or not mat.is_file():
            rows.append({"file": row.file, "status": row.status if row.status != "ok" else "pose_fit_failed"})
            continue
        coeffs = loadmat(mat)
        c2w = deep3d_to_cam2world(coeffs["angle"], coeffs["trans"])
        rows.append({"file": row.file, "status": "ok", **pose_from_cam2world(c2w, camera)})
    return pd.DataFrame(rows, columns=POSE_COLUMNS)


def summarize(poses: pd.DataFrame, ground_truth: pd.DataFrame | None = None) -> dict:
    """Counts, and with ground truth (the demo) the absolute yaw/pitch/roll errors in degrees."""
    ok = poses[poses.status == "ok"]
    summary = {"images_total": len(poses), "poses_ok": len(ok),
               "pose_fit_failed": int((poses.status == "pose_fit_failed").sum()),
               "excluded_upstream": int((~poses.status.isin(["ok", "pose_fit_failed"])).sum()),
               "yaw_deg_mean": float(np.degrees(ok.yaw).mean()) if len(ok) else 0.0,
               "yaw_deg_std": float(np.degrees(ok.yaw).std()) if len(ok) > 1 else 0.0,
               "pitch_deg_std": float(np.degrees(ok.pitch).std()) if len(ok) > 1 else 0.0}
    if ground_truth is not None and len(ok):
        m = ok.merge(ground_truth[["file", "yaw", "pitch", "roll"]], on="file", suffixes=("", "_gt"))
        for subset, mask in (("", np.ones(len(m), bool)), ("_yaw30", np.degrees(m.yaw_gt).abs() <= 30)):
            sub = m[mask]
            for angle in ("yaw", "pitch", "roll"):
                err = np.degrees((sub[angle] - sub[f"{angle}_gt"]).abs())
                summary[f"{angle}_abs_err_deg_median{subset}"] = float(err.median()) if len(sub) else float("nan")
                summary[f"{angle}_abs_err_deg_p90{subset}"] = float(err.quantile(0.9)) if len(sub) else float("nan")
    return summary


def pose_histogram(poses: pd.DataFrame, yaw_std: float, pitch_std: float, truncation: float, out_path: Path) -> Path:
    """Histogram of estimated yaw and pitch against the dataset's pose prior (an artifact)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import truncnorm

    ok = poses[poses.status == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, angle, std in ((axes[0], "yaw", yaw_std), (axes[1], "pitch", pitch_std)):
        ax.hist(np.degrees(ok[angle]), bins=30, density=True, alpha=0.6, label="estimated")
        xs = np.linspace(-truncation * std * 1.3, truncation * std * 1.3, 200)
        ax.plot(np.degrees(xs), truncnorm.pdf(xs, -truncation, truncation, scale=std) * np.pi / 180,
                label=f"prior N(0, {std}^2), |x| < {truncation} sd")
        ax.set_xlabel(f"{angle} (degrees)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Estimated poses ({len(ok)} images) against the pose prior")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path

