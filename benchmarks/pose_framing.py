"""Does the built-in pose estimator depend on where the face sits in the image? The demo's heads are
rendered by GMPI's look-at camera, so a face moves in the image as the camera turns; every real dataset
(FFHQ-cropped) and every custom folder after the align stage is cropped as FFHQ does, which centres the
eyes and mouth whatever the pose. This script fits the demo heads' MTCNN landmarks as rendered and after
FFHQ's crop (gmnr/preprocess/align.py applied to the landmarks), for several widths of the image-shift
prior (``pose.shift_sigma_iod``), uncalibrated and with the calibration fitted on the calibration set,
and prints the line estimated = slope x true + offset and the median error per angle (degrees).

    python benchmarks/pose_calibration.py --work /tmp/pose_calibration   # renders + landmarks, once
    python benchmarks/pose_framing.py --work /tmp/pose_calibration
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def ffhq_cropped(table, size: int = 256):
    """A landmarks table as the align stage carries it into FFHQ's crop (size x size)."""
    from gmnr.preprocess.align import ffhq_quad
    from gmnr.preprocess.landmarks import KEYPOINT_COLUMNS, keypoints_array
    table = table.copy()
    for i, row in table[table.status == "ok"].iterrows():
        points = keypoints_array(row)
        table.loc[i, KEYPOINT_COLUMNS] = ffhq_quad(points).to_crop(points, size).ravel()
        table.loc[i, ["width", "height"]] = size
    return table


def main() -> None:
    import pandas as pd

    from gmnr.config import load_params
    from gmnr.preprocess import pose
    from pose_calibration import line_stats
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/pose_calibration"))
    ap.add_argument("--calib-seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shift-sigmas", type=float, nargs="+", default=[0.05, 3.0])
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    cam = params.cameras["ffhq"]
    camera = pose.CameraModel(cam.fov_deg, cam.radius, tuple(cam.center))
    p = params.pose

    def read(folder, tag):
        lm, gt = pd.read_csv(folder / "interim" / "landmarks.csv"), pd.read_csv(folder / "raw" / "ground_truth.csv")
        return lm.assign(file=tag + lm.file), gt.assign(file=tag + gt.file)

    calib = [read(args.work / f"calibration-{s}", f"{s}/") for s in args.calib_seeds]
    calib_lm, calib_gt = pd.concat([c[0] for c in calib]), pd.concat([c[1] for c in calib])
    demo_lm, demo_gt = read(args.work / "demo", "")
    framings = {"as rendered": demo_lm, "FFHQ-cropped": ffhq_cropped(demo_lm)}
    rows = []
    for sigma in args.shift_sigmas:
        def run(table, calibration=None):
            return pose.builtin_poses(table, camera, p.max_reprojection_iod, sigma, p.keypoint_sigma_iod,
                                      progress=False, calibration=calibration)
        fitted = line_stats(run(calib_lm), calib_gt)
        calibration = {a: pose.AngleCalibration(fitted[a]["slope"], fitted[a]["offset_deg"]) for a in ("yaw", "pitch")}
        for name, table in framings.items():
            for label, cal in (("uncalibrated", None), ("calibrated", calibration)):
                rows.append({"shift_sigma_iod": sigma, "framing": name, "estimator": label,
                             **line_stats(run(table, cal), demo_gt)})
                print(json.dumps(rows[-1]), flush=True)
        print(json.dumps({"shift_sigma_iod": sigma, "calibration fitted": fitted}), flush=True)


if __name__ == "__main__":
    main()
