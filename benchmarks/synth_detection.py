"""Does a real face detector see the synthetic demo heads as faces, with landmarks where we say?

Runs MTCNN (the detector the preprocessing chain uses) over a folder written by
``gmnr.data.synth.generate`` and compares its five keypoints with the projected ground-truth
landmarks in ``ground_truth.csv``. Prints and writes (JSON) the detection rate on all images
and on near-frontal ones (|yaw| <= --yaw-limit-deg), and per-keypoint pixel errors.

Run it in its own process: TensorFlow (inside mtcnn) crashes when it is imported after torch
in the same process, so this script never imports torch nor anything from gmnr that does.

    python benchmarks/synth_detection.py data/synth --report synth_detection.json

Conventions: ground-truth landmarks use pixel centres at i + 0.5 (gmnr.render.camera); MTCNN
reports array-index coordinates (pixel centre at i), so 0.5 is added to its keypoints before
comparing. A face counts as detected when some detection's box contains the ground-truth nose
tip; the most confident such detection supplies the keypoints.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from gmnr.io import atomic_write


def read_ground_truth(folder: Path) -> tuple[list[dict], list[str]]:
    """Rows of ground_truth.csv (numbers parsed) and the landmark names in column order."""
    with open(folder / "ground_truth.csv", newline="") as f:
        reader = csv.DictReader(f)
        names = [c[:-2] for c in reader.fieldnames if c.endswith("_x")]
        rows = []
        for r in reader:
            row = {"file": r["file"], "yaw": float(r["yaw"]), "pitch": float(r["pitch"])}
            row["landmarks"] = np.array([[float(r[f"{n}_x"]), float(r[f"{n}_y"])] for n in names])
            rows.append(row)
    return rows, names


def match_detection(detections: list[dict], nose: np.ndarray) -> dict | None:
    """The most confident detection whose box contains the ground-truth nose tip, if any."""
    best = None
    for det in detections:
        x, y, w, h = det["box"]
        if x <= nose[0] <= x + w and y <= nose[1] <= y + h:
            if best is None or det["confidence"] > best["confidence"]:
                best = det
    return best


def summarise(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "median": None, "p90": None, "count": 0}
    return {"mean": float(np.mean(values)), "median": float(statistics.median(values)),
            "p90": float(np.percentile(values, 90)), "count": len(values)}


def run(folder: Path, yaw_limit_deg: float, batch: int, limit: int | None) -> dict:
    import imageio.v3 as iio
    from mtcnn import MTCNN

    rows, names = read_ground_truth(folder)
    if limit is not None:
        rows = rows[:limit]
    detector = MTCNN()
    start = time.perf_counter()
    per_image = []
    for s in range(0, len(rows), batch):
        chunk = rows[s:s + batch]
        images = [np.ascontiguousarray(iio.imread(folder / "images" / r["file"])[..., :3]) for r in chunk]
        results = detector.detect_faces(images) if len(images) > 1 else [detector.detect_faces(images[0])]
        for r, dets in zip(chunk, results):
            gt = r["landmarks"]
            det = match_detection(dets, gt[names.index("nose")])
            entry = {"file": r["file"], "yaw_deg": math.degrees(r["yaw"]),
                     "pitch_deg": math.degrees(r["pitch"]), "detected": det is not None,
                     "detections": len(dets)}
            if det is not None:
                pred = np.array([det["keypoints"][n] for n in names], dtype=np.float64) + 0.5
                err = np.linalg.norm(pred - gt, axis=1)
                iod = float(np.linalg.norm(gt[names.index("right_eye")] - gt[names.index("left_eye")]))
                entry.update(confidence=float(det["confidence"]),
                             errors_px={n: float(e) for n, e in zip(names, err)},
                             offsets_px={n: [float(v) for v in o] for n, o in zip(names, pred - gt)},
                             mean_error_px=float(err.mean()), mean_error_iod=float(err.mean() / iod))
            per_image.append(entry)
    seconds = time.perf_counter() - start
    return build_report(folder, per_image, names, yaw_limit_deg, seconds)


def build_report(folder: Path, per_image: list[dict], names: list[str], yaw_limit_deg: float,
                 seconds: float) -> dict:
    frontal = [e for e in per_image if abs(e["yaw_deg"]) <= yaw_limit_deg]
    found = [e for e in per_image if e["detected"]]

    def rate(entries: list[dict]) -> float | None:
        return sum(e["detected"] for e in entries) / len(entries) if entries else None

    return {
        "folder": str(folder), "images": len(per_image), "seconds": seconds,
        "yaw_limit_deg": yaw_limit_deg,
        "detection_rate_all": rate(per_image),
        "detection_rate_frontal": rate(frontal), "frontal_images": len(frontal),
        "keypoint_error_px": {
            "all": summarise([v for e in found for v in e["errors_px"].values()]),
            **{n: summarise([e["errors_px"][n] for e in found]) for n in names},
        },
        "mean_error_iod": summarise([e["mean_error_iod"] for e in found]),
        # Mean signed (detector - ground truth) offset: separates bias from scatter.
        "keypoint_bias_px": {n: np.mean([e["offsets_px"][n] for e in found], axis=0).tolist()
                             if found else None for n in names},
        "missed": [e["file"] for e in per_image if not e["detected"]],
        "per_image": per_image,
    }


def print_report(report: dict) -> None:
    print(f"images: {report['images']}  ({report['seconds']:.1f} s)")
    print(f"detection rate, all:              {report['detection_rate_all']:.3f}")
    if report["detection_rate_frontal"] is not None:
        print(f"detection rate, |yaw| <= {report['yaw_limit_deg']:.0f} deg:   "
              f"{report['detection_rate_frontal']:.3f}  ({report['frontal_images']} images)")
    for name, s in report["keypoint_error_px"].items():
        if s["count"]:
            print(f"keypoint error {name:12s} mean {s['mean']:.2f} px  median {s['median']:.2f} px"
                  f"  p90 {s['p90']:.2f} px")
    for name, b in report["keypoint_bias_px"].items():
        if b is not None:
            print(f"keypoint bias  {name:12s} dx {b[0]:+.2f} px  dy {b[1]:+.2f} px")
    if report["mean_error_iod"]["count"]:
        print(f"mean error / inter-ocular distance: {report['mean_error_iod']['mean']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder written by gmnr.data.synth.generate")
    parser.add_argument("--report", type=Path, default=None,
                        help="JSON report path (default: FOLDER/synth_detection.json)")
    parser.add_argument("--yaw-limit-deg", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = parser.parse_args(argv)
    if "torch" in sys.modules:
        raise RuntimeError("run this benchmark in a process without torch (TensorFlow crashes)")
    report = run(args.folder, args.yaw_limit_deg, args.batch, args.limit)
    print_report(report)
    path = args.report or args.folder / "synth_detection.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)),
                 tmp_name=f".{path.name}.tmp{os.getpid()}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
