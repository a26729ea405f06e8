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
           "x1", "y1", "x2", "y2", *KEYPOINT_COLUMNS, "views"]
# Status values: ok | unreadable | too_large | refused | non_square | no_face | low_confidence.
# width/height are those of the image every stage sees (after images.non_square's centre crop);
# cropped says whether the file was not square. views: how many detections the row's box and keypoints
# average (2: the image and its mirror image; 1: one of them; 0: no face).

# MTCNN reports keypoints in array-index coordinates (pixel i's centre at i), and landmarks.csv keeps
# them so (Deep3DFaceRecon's detections/*.txt expect that); the intrinsics, and so the projected true
# landmarks of the demo, put pixel i's centre at i + 0.5 (principal point at width / 2). Uncorrected, the
# half pixel moved every estimated pitch by -0.35 deg and yaw by +0.4 deg on the demo
# (benchmarks/pose_calibration.py).
MTCNN_TO_CAMERA_PIXELS = 0.5

MIRROR_MATCH_IOU = 0.5  # a mirror-image face is the same face when its (mirrored back) box overlaps this much


@dataclass(frozen=True)
class DetectorSettings:
    min_confidence: float = 0.9
    min_face_size: int = 20
    batch_size: int = 16
    # Also detect on the mirror image and average the two detections (test-time augmentation). MTCNN's
    # keypoints scatter about the true points by ~2 degrees of pose, and part of that scatter differs between
    # an image and its mirror: averaging cut the calibrated estimator's median error on the demo from
    # 1.35 / 2.04 to 1.11 / 1.74 degrees (yaw / pitch) and found 9 more of its 200 faces
    # (docs/benchmarks.md, "Pose estimator calibration"). Costs a second MTCNN pass.
    mirror_average: bool = True


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


def mirror_back(faces: np.ndarray, width: int) -> np.ndarray:
    """MTCNN rows [n, 16] found on the mirror image (x -> width - 1 - x: MTCNN puts pixel i's centre at
    i) -> the same faces in the image's coordinates: x mirrored, and the left/right eyes and mouth
    corners swapped so that each keeps its name."""
    out = faces.copy()
    out[:, [1, 3]] = width - 1 - faces[:, [3, 1]]
    xs = width - 1 - faces[:, 6:11]
    out[:, 6:11] = xs[:, [1, 0, 2, 4, 3]]  # left eye, right eye, nose, mouth left, mouth right
    out[:, 11:16] = faces[:, 11:16][:, [1, 0, 2, 4, 3]]
    return out


def box_iou(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """IoU of box a [4] (x1, y1, x2, y2) with each box of rows [n, 4]."""
    w = (np.minimum(a[2], rows[:, 2]) - np.maximum(a[0], rows[:, 0])).clip(min=0)
    h = (np.minimum(a[3], rows[:, 3]) - np.maximum(a[1], rows[:, 1])).clip(min=0)
    inter = w * h
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area(a) + area(rows) - inter, 1e-9)


def combine_views(faces: np.ndarray, mirrored: np.ndarray | None, width: int, height: int,
                  min_confidence: float) -> tuple[np.ndarray | None, int]:
    """The face to keep from the image's MTCNN rows and (optionally) its mirror image's, already
    mirrored back, and how many detections it averages. The image's choice (choose_face) wins; its
    match in the mirror (box IoU >= MIRROR_MATCH_IOU, confident) is averaged in. A face only the mirror
    image finds with confidence is kept alone."""
    best = faces[choose_face(faces, width, height)] if len(faces) else None
    confident = mirrored[mirrored[:, 5] >= min_confidence] if mirrored is not None else np.empty((0, 16))
    if best is None or best[5] < min_confidence:
        if len(confident):  # only the mirror image finds this face with confidence
            return confident[choose_face(confident, width, height)], 1
        return best, int(best is not None)
    if len(confident):
        iou = box_iou(best[1:5], confident[:, 1:5])
        if iou.max() >= MIRROR_MATCH_IOU:
            match = confident[int(np.argmax(iou))]
            merged = best.copy()
            merged[1:5] = (best[1:5] + match[1:5]) / 2
            merged[6:16] = (best[6:16] + match[6:16]) / 2
            return merged, 2
    return best, 1


def _row(file: str, status: str, shape=(0, 0), error: str = "", n_faces: int = 0,
         face: np.ndarray | None = None, cropped: bool = False, views: int = 0) -> dict:
    row = {"file": file, "status": status, "error": error, "width": shape[1], "height": shape[0],
           "cropped": int(cropped), "n_faces": n_faces, "views": views}
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
            batch = [images[i] for i in idx]
            if settings.mirror_average:
                batch += [np.ascontiguousarray(images[i][:, ::-1]) for i in idx]
            try:
                found = detect_batch(detector, batch, settings)
            except Exception as exc:
                found = None
                for i in idx:
                    rows.append(_row(names[i], "unreadable", shape, error=f"detector failed: {exc}"[:300],
                                     cropped=cropped[i]))
            if found is None:
                continue
            for j, i in enumerate(idx):
                faces = found[j]
                mirrored = mirror_back(found[len(idx) + j], shape[1]) if settings.mirror_average else None
                face, views = combine_views(faces, mirrored, shape[1], shape[0], settings.min_confidence)
                if face is None:
                    rows.append(_row(names[i], "no_face", shape, cropped=cropped[i]))
                    continue
                status = "ok" if face[5] >= settings.min_confidence else "low_confidence"
                n_faces = len(faces) if len(faces) else len(found[len(idx) + j])
                rows.append(_row(names[i], status, shape, n_faces=n_faces, face=face, cropped=cropped[i], views=views))
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
    rate at |yaw| <= 30 deg and the keypoint error against the projected true landmarks (in the
    camera's pixel convention: MTCNN's points moved by :data:`MTCNN_TO_CAMERA_PIXELS`)."""
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
            shift = MTCNN_TO_CAMERA_PIXELS
            err = np.stack([np.hypot(ok[f"{n}_x"] + shift - ok[f"{n}_x_gt"], ok[f"{n}_y"] + shift - ok[f"{n}_y_gt"])
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
