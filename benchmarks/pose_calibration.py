"""Measure (and re-derive) the built-in pose estimator's calibration against MTCNN's keypoints.

Two sets of procedural heads (gmnr.data.synth), each with its true camera per image:

* a *calibration* set rendered with ``--calib-seeds`` (default 1 and 2, 300 heads each): the demo
  uses ``seed: 0``, so its identities and poses are not the demo's (image i depends only on
  (seed, i));
* the *demo* set itself (params.yaml's seed and synth.count), the set the acceptance figures
  are measured on and the calibration never sees.

On both, `gmnr landmarks` (MTCNN, in its own process: TensorFlow and torch do not share one)
finds the 5 keypoints; then this script fits the estimator with several variants and reports,
per angle, the line ``estimated = slope * true + offset`` (degrees, over the whole pose range)
and the median absolute error:

* ``true landmarks``: the projected true landmarks (is the estimator itself unbiased?), and the
  same with MTCNN's nose, eyes or mouth corners swapped in (whose bias is it?);
* ``main``: what the pose stage did before calibration (MTCNN's array-index pixel coordinates
  taken as the camera's, no correction);
* ``pixel convention``: keypoints moved by half a pixel into the intrinsics' convention;
* ``rigid MTCNN layout``: the 3D layout of MTCNN's points triangulated through the calibration
  set's known cameras (8 mirror-symmetric offsets), instead of the anatomical layout: can a
  better 3D model absorb the bias? (No: see docs/benchmarks.md);
* ``calibrated``: the pose stage now, with the per-angle calibration fitted on the calibration
  set (the values to put in params.yaml ``pose.look_at.calibration``: these heads are look-at renders), and the one params.yaml holds.

    python benchmarks/pose_calibration.py --work /tmp/pose_calibration --report pose_calibration.json

Renders 600 + 200 heads at 256 px (about 0.4 s each on 2 free cores), runs MTCNN three times
(about 20 s each) and fits about 2000 poses (about 0.07 s each). Existing renders under --work are reused
when their meta.json matches.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _gmnr(*args: str, work: Path) -> None:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-m", "gmnr", *args, "--no-progress"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gmnr {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def prepare(work: Path, name: str, seed: int, count: int) -> Path:
    """Render ``count`` heads of ``seed`` and run the landmarks stage on them (reused when present)."""
    folder = work / name
    meta = folder / "raw" / "meta.json"
    rendered = (meta.is_file() and json.loads(meta.read_text()).get("seed") == seed
                and json.loads(meta.read_text()).get("count") == count)
    if not rendered:
        print(f"{name}: rendering {count} heads (seed {seed})", flush=True)
        _gmnr("synth", "-S", f"seed={seed}", "-S", f"synth.count={count}", "--output", str(folder / "raw"),
              "--reports", str(folder / "reports"), work=work)
    if not rendered or not (folder / "interim" / "landmarks.csv").is_file():
        # Delete interim/ to redetect with changed landmarks params (the renders are kept).
        print(f"{name}: running MTCNN (gmnr landmarks)", flush=True)
        _gmnr("landmarks", "-S", f"seed={seed}", "--input", str(folder / "raw"), "--output",
              str(folder / "interim"), "--reports", str(folder / "reports"), work=work)
    return folder


def symmetric_offsets(p: np.ndarray) -> np.ndarray:
    """Offsets [5, 3] in IODs from 8 numbers (eye inward, dy, dz; nose dy, dz; mouth inward, dy,
    dz): mirror-image pairs, the nose on the midline."""
    eye_in, eye_dy, eye_dz, nose_dy, nose_dz, mouth_in, mouth_dy, mouth_dz = p
    return np.array([[+eye_in, eye_dy, eye_dz], [-eye_in, eye_dy, eye_dz], [0.0, nose_dy, nose_dz],
                     [+mouth_in, mouth_dy, mouth_dz], [-mouth_in, mouth_dy, mouth_dz]])


def rigid_mtcnn_layout(table, truth, k) -> tuple[np.ndarray, dict]:
    """The anatomical layout moved by the 8 offsets whose points, on each calibration head (its
    true landmarks) seen by its true camera, project closest to MTCNN's keypoints (soft-L1)."""
    import torch
    from scipy.optimize import least_squares

    from gmnr.data import synth
    from gmnr.data.face_layout import IOD, MEAN_LANDMARKS_3D
    from gmnr.preprocess.landmarks import KEYPOINT_COLUMNS
    from gmnr.preprocess.pose import MTCNN_TO_CAMERA_PIXELS
    from gmnr.render.camera import pose_to_cam2world
    m = table[table.status == "ok"].merge(truth[["file", "yaw", "pitch", "roll", "radius", "identity_seed"]],
                                          on="file")
    heads = [synth.sample_head(np.random.default_rng(int(s))) for s in m.identity_seed]
    true3d = np.stack([synth.head_landmarks_3d(h) for h in heads])
    unit = np.array([IOD * h.scale for h in heads])[:, None, None]
    c2w = pose_to_cam2world(torch.tensor(m.yaw.values), torch.tensor(m.pitch.values), torch.tensor(m.roll.values),
                            torch.tensor(m.radius.values)).numpy()
    w2c = np.linalg.inv(c2w)
    pts = m[KEYPOINT_COLUMNS].to_numpy(np.float64).reshape(-1, 5, 2) + MTCNN_TO_CAMERA_PIXELS
    iod = np.linalg.norm(pts[:, 1] - pts[:, 0], axis=1)[:, None, None]

    def residuals(p):
        world = true3d + unit * symmetric_offsets(p)[None]
        cam = np.einsum("nij,nkj->nki", w2c[:, :3, :3], world) + w2c[:, None, :3, 3]
        uv = cam @ k.T
        return ((uv[..., :2] / uv[..., 2:3] - pts) / iod).ravel()

    fit = least_squares(residuals, np.zeros(8), loss="soft_l1", f_scale=0.05)
    return MEAN_LANDMARKS_3D + IOD * symmetric_offsets(fit.x), {"offsets_iod": fit.x.round(4).tolist()}


def line_stats(poses, truth) -> dict:
    from gmnr.preprocess.pose import fit_line
    m = poses[poses.status == "ok"].merge(truth[["file", "yaw", "pitch"]], on="file", suffixes=("", "_gt"))
    out = {"images": len(m)}
    for angle in ("yaw", "pitch"):
        slope, offset = fit_line(np.degrees(m[f"{angle}_gt"]), np.degrees(m[angle]))
        out[angle] = {"slope": round(slope, 4), "offset_deg": round(offset, 3),
                      "median_abs_err_deg": round(float(np.degrees((m[angle] - m[f"{angle}_gt"]).abs()).median()), 3)}
    return out


def estimate(table, camera, params, calibration=None, layout=None, pixel_shift=0.0):
    """The pose stage's builtin estimator on a landmarks table; ``layout`` swaps the 3D model
    (through fit_pose), ``pixel_shift`` is added to the keypoints first."""
    import pandas as pd

    from gmnr.preprocess import pose
    from gmnr.preprocess.landmarks import KEYPOINT_COLUMNS
    from gmnr.render.camera import intrinsics_from_fov
    table = table.copy()
    table[KEYPOINT_COLUMNS] = table[KEYPOINT_COLUMNS] + pixel_shift
    p = params.pose
    if layout is None:
        return pose.builtin_poses(table, camera, p.max_reprojection_iod, p.look_at.shift_sigma_iod, p.keypoint_sigma_iod,
                                  progress=False, calibration=calibration)
    rows = []
    for _, row in table[table.status == "ok"].iterrows():
        k = intrinsics_from_fov(camera.fov_deg, int(row.width), int(row.height)).double().numpy()
        pts = row[KEYPOINT_COLUMNS].to_numpy(np.float64).reshape(5, 2) + pose.MTCNN_TO_CAMERA_PIXELS
        x, _ = pose.fit_pose(pts, k, camera, p.look_at.shift_sigma_iod, p.keypoint_sigma_iod, layout=layout)
        rows.append({"file": row.file, "status": "ok", **pose.pose_from_cam2world(pose._camera(x, camera), camera)})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/pose_calibration"))
    ap.add_argument("--calib-seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--calib-count", type=int, default=300, help="heads per calibration seed")
    ap.add_argument("--subset", type=int, default=40, help="also report the demo's first N images (the "
                                                           "pipeline tests' small demo)")
    ap.add_argument("--report", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()

    from gmnr.config import load_params
    params = load_params()
    if params.seed in args.calib_seeds:
        raise SystemExit(f"--calib-seeds {args.calib_seeds} hold the demo's own seed: the calibration must not see it")
    args.work.mkdir(parents=True, exist_ok=True)
    calib = [prepare(args.work, f"calibration-{s}", s, args.calib_count) for s in args.calib_seeds]
    demo = prepare(args.work, "demo", params.seed, params.synth.count)

    import pandas as pd

    from gmnr.preprocess import pose
    from gmnr.preprocess.landmarks import KEYPOINT_COLUMNS
    from gmnr.render.camera import intrinsics_from_fov
    cam = params.cameras["ffhq"]  # synth renders with the ffhq camera
    camera = pose.CameraModel(cam.fov_deg, cam.radius, tuple(cam.center))
    k = intrinsics_from_fov(cam.fov_deg, params.synth.resolution).double().numpy()
    def read(folder, tag):  # file names repeat across seeds: prefix them with the seed
        lm, gt = pd.read_csv(folder / "interim" / "landmarks.csv"), pd.read_csv(folder / "raw" / "ground_truth.csv")
        return lm.assign(file=tag + lm.file), gt.assign(file=tag + gt.file)
    parts = [read(folder, f"{s}/") for s, folder in zip(args.calib_seeds, calib)]
    sets = {"calibration": (pd.concat([p[0] for p in parts], ignore_index=True),
                            pd.concat([p[1] for p in parts], ignore_index=True)),
            "demo": read(demo, "")}

    # The calibration: the uncorrected estimator's line on the calibration set, per angle.
    table, truth = sets["calibration"]
    fitted = line_stats(estimate(table, camera, params), truth)
    calibration = {a: pose.AngleCalibration(fitted[a]["slope"], fitted[a]["offset_deg"]) for a in ("yaw", "pitch")}
    in_params = {a: pose.AngleCalibration(**getattr(params.pose.look_at.calibration, a).model_dump()) for a in ("yaw", "pitch")}
    layout, layout_info = rigid_mtcnn_layout(table, truth, k)

    table, truth = sets["demo"]
    true_table = table.copy()  # the projected true landmarks, in MTCNN's convention (pixel centre at i)
    gt = truth.set_index("file").loc[true_table.file]
    true_table[KEYPOINT_COLUMNS] = gt[KEYPOINT_COLUMNS].to_numpy() - pose.MTCNN_TO_CAMERA_PIXELS
    true_table["status"] = "ok"
    def true_but(names):  # the true landmarks with some of MTCNN's points swapped in: whose bias is it?
        mixed = true_table[true_table.file.isin(table.file[table.status == "ok"])].copy()
        cols = [f"{n}_{a}" for n in names for a in "xy"]
        mixed[cols] = table.set_index("file").loc[mixed.file, cols].to_numpy()
        return estimate(mixed, camera, params)
    variants = {
        "true landmarks": estimate(true_table, camera, params),
        "true, MTCNN's nose": true_but(["nose"]),
        "true, MTCNN's eyes": true_but(["left_eye", "right_eye"]),
        "true, MTCNN's mouth": true_but(["mouth_left", "mouth_right"]),
        "main (before)": estimate(table, camera, params, pixel_shift=-pose.MTCNN_TO_CAMERA_PIXELS),
        "pixel convention": estimate(table, camera, params),
        "rigid MTCNN layout": estimate(table, camera, params, layout=layout),
        "calibrated (fitted now)": estimate(table, camera, params, calibration=calibration),
        "calibrated (params.yaml)": estimate(table, camera, params, calibration=in_params),
    }
    first = set(sorted(truth.file)[:args.subset])
    report = {"calibration_set": {"seeds": args.calib_seeds, "count_per_seed": args.calib_count, **fitted},
              "fitted_calibration": {a: {"slope": c.slope, "offset_deg": c.offset_deg} for a, c in calibration.items()},
              "params_calibration": {a: {"slope": c.slope, "offset_deg": c.offset_deg} for a, c in in_params.items()},
              "rigid_mtcnn_layout": layout_info,
              "demo": {name: line_stats(p, truth) for name, p in variants.items()},
              f"demo_first_{args.subset}": {name: line_stats(p[p.file.isin(first)], truth)
                                            for name, p in variants.items()}}
    print(f"calibration fitted on {fitted['images']} heads of seeds {args.calib_seeds}: "
          + ", ".join(f"{a} slope {c.slope:.4f} offset {c.offset_deg:+.3f} deg" for a, c in calibration.items()))
    for section in ("demo", f"demo_first_{args.subset}"):
        print(f"\n{section}: estimated = slope * true + offset (deg), median |error| (deg)")
        print("| variant | images | yaw slope | yaw offset | yaw median | pitch slope | pitch offset | pitch median |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in report[section].items():
            print(f"| {name} | {r['images']} | " + " | ".join(
                f"{r[a]['slope']:.3f} | {r[a]['offset_deg']:+.2f} | {r[a]['median_abs_err_deg']:.2f}" for a in ("yaw", "pitch"))
                + " |")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    for name, p in variants.items():  # per-image estimates, for a closer look
        p.to_csv(args.work / f"demo_poses_{re.sub('[^a-z0-9]+', '_', name).strip('_')}.csv", index=False)


if __name__ == "__main__":
    main()
