"""MTCNN face boxes and 5 landmarks for every image of a dataset.

TensorFlow (which ``mtcnn`` needs) segfaults when it is imported before torch in one process,
so this module never imports torch and the stage always runs in its own process
(``gmnr landmarks``). A bad image never stops the stage: it is skipped, counted and listed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gmnr.data.face_layout import LANDMARK_NAMES
from gmnr.io import atomic_write
from gmnr.data.images import IMAGE_SUFFIXES, ImagePolicy, ImageRefused, list_images, read_image, relative_name, unique_names

KEYPOINT_COLUMNS = [f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y")]
COLUMNS = ["file", "status", "error", "width", "height", "cropped", "n_faces", "confidence",
           "x1", "y1", "x2", "y2", *KEYPOINT_COLUMNS]
# Status values: ok | unreadable | too_large | refused | non_square | no_face | low_confidence.
# width/height are those of the image every stage sees (after images.non_square's centre crop);
# cropped says whether the file was not square.


@dataclass(frozen=True)
class DetectorSettings:
    min_confidence: float = 0.9
    min_face_size: int = 20
    batch_size: int = 16


def load_detector():
    """MTCNN with its packaged weights (works offline). Imported here, never at module load."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mtcnn import MTCNN
    return MTCNN(device="CPU:0")


def choose_face(rows: np.ndarray, width: int, height: int) -> int:
    """Index of the face to keep among MTCNN rows [n, 16]: the most central, most confident.

    Score = confidence - distance of the box centre from the image centre (as a fraction of
    the half-diagonal), so a confident face in the middle beats a confident face at the
    border, and between two central faces the more confident wins.
    """
    cx = (rows[:, 1] + rows[:, 3]) / 2 - width / 2
    cy = (rows[:, 2] + rows[:, 4]) / 2 - height / 2
    offcentre = np.hypot(cx, cy) / (0.5 * np.hypot(width, height))
    return int(np.argmax(rows[:, 5] - offcentre))


def _row(file: str, status: str, shape=(0, 0), error: str = "", n_faces: int = 0,
         face: np.ndarray | None = None, cropped: bool = False) -> dict:
    row = {"file": file, "status": status, "error": error, "width": shape[1], "height": shape[0],
           "cropped": int(cropped), "n_faces": n_faces}
    if face is None:
        box, confidence, points = [np.nan] * 4, np.nan, [np.nan] * 10
    else:
        # MTCNN's numpy rows hold the keypoints as x0..x4 then y0..y4 (its JSON output rounds
        # them to integers, so we read the rows and keep the sub-pixel values).
        box, confidence = face[1:5], face[5]
        points = np.stack([face[6:11], face[11:16]], axis=1).ravel()
    row.update(dict(zip(["x1", "y1", "x2", "y2"], map(float, box))))
    row["confidence"] = float(confidence)
    row.update(dict(zip(KEYPOINT_COLUMNS, map(float, points))))
    return row


def detect_batch(detector, images: list[np.ndarray], settings: DetectorSettings) -> list[np.ndarray]:
    """MTCNN rows [n_i, 16] per image: image id, x1, y1, x2, y2, score, x0..x4, y0..y4."""
    out = detector.detect_faces(images, box_format="xyxy", output_type="numpy",
                                min_face_size=settings.min_face_size)
    out = np.asarray(out, dtype=np.float64).reshape(-1, 16)
    return [out[out[:, 0] == i] for i in range(len(images))]


def run_landmarks(image_dir: Path, settings: DetectorSettings, detector=None, progress: bool = True,
                  policy: ImagePolicy | None = None) -> pd.DataFrame:
    """One row per image (COLUMNS). Never raises for a single bad image; raises when there are no
    images at all (an empty or mistyped --input must not pass as a dataset of nothing)."""
    from tqdm import tqdm

    policy = policy or ImagePolicy(non_square="crop")
    files = list_images(image_dir)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found under "
                                f"{image_dir}: check --input")
    detector = detector or load_detector()
    rows: list[dict] = []
    bar = tqdm(total=len(files), desc="landmarks (MTCNN)", unit="img", disable=not progress)
    for start in range(0, len(files), settings.batch_size):
        batch_files = files[start:start + settings.batch_size]
        images, names, cropped = [], [], []
        for path in batch_files:
            name = relative_name(path, image_dir)
            try:
                loaded = read_image(path, policy)
            except ImageRefused as exc:  # by policy: too many pixels, not a regular file, not square
                rows.append(_row(name, exc.status, error=exc.reason[:300]))
                continue
            except Exception as exc:  # corrupt, truncated, not an image: skip and record why
                rows.append(_row(name, "unreadable", error=f"{type(exc).__name__}: {exc}"[:300]))
                continue
            images.append(loaded.rgb)
            names.append(name)
            cropped.append(loaded.cropped)
        # Same-size images share one MTCNN call; odd sizes go alone (MTCNN pads batches).
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for shape, idx in groups.items():
            try:
                found = detect_batch(detector, [images[i] for i in idx], settings)
            except Exception as exc:
                found = None
                for i in idx:
                    rows.append(_row(names[i], "unreadable", shape, error=f"detector failed: {exc}"[:300],
                                     cropped=cropped[i]))
            for i, faces in zip(idx, found or []):
                if len(faces) == 0:
                    rows.append(_row(names[i], "no_face", shape, cropped=cropped[i]))
                    continue
                best = faces[choose_face(faces, shape[1], shape[0])]
                status = "ok" if best[5] >= settings.min_confidence else "low_confidence"
                rows.append(_row(names[i], status, shape, n_faces=len(faces), face=best, cropped=cropped[i]))
        bar.update(len(batch_files))
    bar.close()
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values("file", kind="stable").reset_index(drop=True)
    return table


def keypoints_array(row: pd.Series) -> np.ndarray:
    """The 5 landmarks of one table row as [5, 2] pixels."""
    return row[KEYPOINT_COLUMNS].to_numpy(dtype=np.float64).reshape(5, 2)


def export_keypoint_txt(table: pd.DataFrame, out_dir: Path, flat: bool = False) -> dict:
    """Per-image ``<stem>.txt`` with 5 lines ``x y`` (left eye, right eye, nose, mouth left,
    mouth right): the ``detections/`` files that Deep3DFaceRecon and the GMPI tooling read.

    ``x.jpg`` and ``x.png`` would both become ``x.txt``: such collisions get ``x-1.txt``
    (:func:`gmnr.data.images.unique_names`); returns ``{"written", "renamed", "names"}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = table[table.status == "ok"]
    names, renamed = unique_names(list(ok.file), ".txt", flat=flat)
    for _, row in ok.iterrows():
        pts = keypoints_array(row)
        target = out_dir / names[row.file]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in pts))
    return {"written": len(ok), "renamed": len(renamed), "names": names}


def summarize(table: pd.DataFrame, seconds: float, ground_truth: pd.DataFrame | None = None) -> dict:
    """Counts and rates for the report and MLflow; with ground truth (the demo), the detection
    rate at |yaw| <= 30 deg and the keypoint error against the projected true landmarks."""
    counts = table.status.value_counts().to_dict()
    total = len(table)
    readable = total - sum(counts.get(s, 0) for s in ("unreadable", "too_large", "refused", "non_square"))
    summary = {
        "images_total": total,
        "faces_found": int(counts.get("ok", 0)),
        "unreadable": int(counts.get("unreadable", 0)),
        "too_large": int(counts.get("too_large", 0)),
        "refused": int(counts.get("refused", 0)),
        "non_square_refused": int(counts.get("non_square", 0)),
        "non_square_cropped": int(table.cropped.sum()) if "cropped" in table else 0,
        "no_face": int(counts.get("no_face", 0)),
        "low_confidence": int(counts.get("low_confidence", 0)),
        "multiple_faces": int((table.n_faces > 1).sum()),
        "detection_rate": counts.get("ok", 0) / readable if readable else 0.0,
        "seconds": seconds,
        "seconds_per_image": seconds / total if total else 0.0,
    }
    if ground_truth is not None and len(ground_truth):
        merged = table.merge(ground_truth, on="file", suffixes=("", "_gt"))
        frontal = merged[np.degrees(merged.yaw).abs() <= 30]
        summary["detection_rate_yaw30"] = float((frontal.status == "ok").mean()) if len(frontal) else 0.0
        summary["images_yaw30"] = len(frontal)
        ok = merged[merged.status == "ok"]
        if len(ok):
            err = np.stack([np.hypot(ok[f"{n}_x"] - ok[f"{n}_x_gt"], ok[f"{n}_y"] - ok[f"{n}_y_gt"])
                            for n in LANDMARK_NAMES])
            summary["keypoint_error_px_median"] = float(np.median(err))
            summary["keypoint_error_px_mean"] = float(np.mean(err))
    return summary


def draw_contact_sheet(image_dir: Path, table: pd.DataFrame, out_path: Path, n: int = 16, tile: int = 160,
                       policy: ImagePolicy | None = None) -> Path:
    """A grid of sample images with their box and 5 landmarks drawn (an MLflow artifact). Images
    are read as the detector saw them (same reader and policy), so the points line up."""
    from PIL import Image, ImageDraw
    policy = policy or ImagePolicy(non_square="crop")

    picks = pd.concat([table[table.status == "ok"].head(n - min(4, n // 4)),
                       table[table.status != "ok"].head(min(4, n // 4))])
    cols = 4
    rows = max(1, -(-len(picks) // cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (40, 40, 40))
    colors = [(0, 255, 0), (0, 200, 255), (255, 0, 0), (255, 0, 255), (255, 255, 0)]
    root = image_dir / "images" if (image_dir / "images").is_dir() else image_dir
    for k, (_, row) in enumerate(picks.iterrows()):
        try:
            img = Image.fromarray(read_image(root / row.file, policy).rgb)
        except Exception:
            img = Image.new("RGB", (tile, tile), (90, 0, 0))
        scale = tile / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        draw = ImageDraw.Draw(img)
        if row.status in ("ok", "low_confidence"):
            draw.rectangle([row.x1 * scale, row.y1 * scale, row.x2 * scale, row.y2 * scale], outline=(255, 255, 255))
            for (x, y), c in zip(keypoints_array(row) * scale, colors):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
        draw.text((3, 3), row.status, fill=(255, 255, 255))
        sheet.paste(img, ((k % cols) * tile, (k // cols) * tile))
    return atomic_write(out_path, lambda tmp: sheet.save(tmp, format="PNG"))
