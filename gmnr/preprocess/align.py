"""FFHQ-style alignment of in-the-wild photos from their 5 MTCNN landmarks.

The crop follows FFHQ's published recipe (NVlabs/ffhq-dataset, ``download_ffhq.py``,
``recreate_aligned_images``), with the 5 MTCNN points in place of the 68 dlib points it reads
(its eye centres are the means of the eye contours, its mouth corners points 48 and 54; MTCNN
gives those five points directly):

* ``eye_avg`` = midpoint of the eyes, ``eye_to_eye`` = right eye - left eye,
  ``mouth_avg`` = midpoint of the mouth corners, ``eye_to_mouth`` = mouth_avg - eye_avg;
* ``x = eye_to_eye - flipud(eye_to_mouth) * [-1, 1]``, normalised, scaled to
  ``max(|eye_to_eye| * 2.0, |eye_to_mouth| * 1.8)``; ``y = flipud(x) * [-1, 1]``;
* centre ``c = eye_avg + 0.1 * eye_to_mouth``; the crop is the square
  ``quad = [c - x - y, c - x + y, c + x + y, c + x - y]`` of side ``qsize = 2 |x|``;
* the image is first shrunk by an integer factor when the crop is more than twice the output
  size (antialiasing), cropped to the quad plus a border of ``max(rint(0.1 qsize), 3)``, and where
  the quad leaves the image it is padded by reflection (at least ``rint(0.3 qsize)``), the padding
  blurred (sigma ``0.02 qsize``) and faded towards the image's median colour, as FFHQ does;
* the quad is resampled (Pillow ``QUAD``, bilinear, corners ``quad + 0.5``) at ``supersample``
  times the output size and reduced to the output size with a Lanczos filter (FFHQ: 4096 px, then
  1024 px).

EG3D's in-the-wild variant (Deep3DFaceRecon's 5-point similarity, then a recentring crop) is not
used: FFHQ's is the crop every FFHQ-trained model and GMPI's camera prior assume.

The landmarks are carried through the same similarity, so no second detection is needed: a
point ``p`` (pixel-index coordinates, pixel centres at integers) lands at
``((p - c) . x / |x|^2 + 1) * S / 2 - 0.5`` (and the same with ``y``) in an ``S`` px crop.

Faces the recipe cannot serve are skipped with a reason, never fatal:

* ``face_too_small``: eye-to-mouth distance below ``min_eye_to_mouth_px`` (an FFHQ crop puts it
  at about 0.24 of the side: 61 px at 256 px, so 10 px is a 6x upsampling);
* ``cut_by_border``: a landmark outside the image, or the crop square reaching further outside
  the image than ``max_outside_fraction`` of its side (the face spans roughly the crop's middle
  half, so beyond a quarter the reflected padding mirrors the face itself).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gmnr.preprocess.landmarks import COLUMNS, KEYPOINT_COLUMNS, keypoints_array

ALIGN_COLUMNS = [*COLUMNS, "source_file", "eye_to_mouth_px", "crop_side_px", "outside_fraction"]
SKIP_STATUSES = ("face_too_small", "cut_by_border")


@dataclass(frozen=True)
class AlignSettings:
    """``resolution``: output side in pixels; thresholds as in the module doc."""
    resolution: int
    min_eye_to_mouth_px: float = 10.0
    max_outside_fraction: float = 0.25
    supersample: int = 4
    enable_padding: bool = True


@dataclass(frozen=True)
class FFHQQuad:
    """The recipe's crop: centre ``c``, half-axes ``x`` and ``y`` (orthogonal, equal length)."""
    c: np.ndarray
    x: np.ndarray
    y: np.ndarray
    eye_to_mouth: float

    @property
    def quad(self) -> np.ndarray:
        """[4, 2] corners in Pillow QUAD order: upper-left, lower-left, lower-right, upper-right."""
        c, x, y = self.c, self.x, self.y
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])

    @property
    def qsize(self) -> float:
        return float(np.hypot(*self.x) * 2)

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Points [N, 2] of the source image in the ``size`` px crop (both in pixel-index coordinates)."""
        d = np.asarray(points, dtype=np.float64) - self.c
        a = d @ self.x / float(self.x @ self.x)
        b = d @ self.y / float(self.y @ self.y)
        return np.stack([(a + 1) * size / 2 - 0.5, (b + 1) * size / 2 - 0.5], axis=-1)

    def outside_fraction(self, width: int, height: int) -> float:
        """How far the crop square reaches beyond the image, as a fraction of its side (0: inside)."""
        q = self.quad + 0.5  # pixel edges: the image spans [0, width] x [0, height]
        beyond = max(-q[:, 0].min(), -q[:, 1].min(), q[:, 0].max() - width, q[:, 1].max() - height, 0.0)
        return float(beyond / self.qsize)


def ffhq_quad(points: np.ndarray) -> FFHQQuad:
    """FFHQ's crop for 5 landmarks [5, 2] (left eye, right eye, nose, mouth left, mouth right)."""
    points = np.asarray(points, dtype=np.float64)
    assert points.shape == (5, 2), f"expected 5 landmarks [5, 2], got {points.shape}"
    eye_left, eye_right, _, mouth_left, mouth_right = points
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x = x / np.hypot(*x)
    x = x * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return FFHQQuad(c, x, y, float(np.hypot(*eye_to_mouth)))


def canonical_positions(points: np.ndarray) -> np.ndarray:
    """Where the recipe puts 5 landmarks, in fractions of the crop side (pixel edges at 0 and 1)."""
    q = ffhq_quad(points)
    return (q.to_crop(points, 1000) + 0.5) / 1000


def check_face(points: np.ndarray, width: int, height: int, settings: AlignSettings) -> tuple[str, str] | None:
    """``(status, reason)`` when the face cannot be aligned, else None."""
    q = ffhq_quad(points)
    if q.eye_to_mouth < settings.min_eye_to_mouth_px:
        return "face_too_small", (f"eye-to-mouth distance {q.eye_to_mouth:.1f} px is below align.min_eye_to_mouth_px "
                                  f"= {settings.min_eye_to_mouth_px:g}")
    inside = (points[:, 0] >= -0.5) & (points[:, 0] <= width - 0.5) & (points[:, 1] >= -0.5) & \
        (points[:, 1] <= height - 0.5)
    if not inside.all():
        return "cut_by_border", f"{int((~inside).sum())} of the 5 landmarks lie outside the {width} x {height} image"
    outside = q.outside_fraction(width, height)
    if outside > settings.max_outside_fraction:
        return "cut_by_border", (f"the crop reaches {outside:.2f} of its side beyond the image border (more than "
                                 f"align.max_outside_fraction = {settings.max_outside_fraction:g})")
    return None


def crop_ffhq(rgb: np.ndarray, q: FFHQQuad, settings: AlignSettings) -> np.ndarray:
    """The aligned ``resolution`` px crop of an H x W x 3 uint8 image (FFHQ's shrink, crop, pad,
    transform; the module doc gives the recipe)."""
    import scipy.ndimage
    from PIL import Image

    size = settings.resolution
    img = Image.fromarray(rgb)
    quad, qsize = q.quad.copy(), q.qsize
    # Shrink: sampling a crop many times the output size with a bilinear filter would alias.
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    # Crop to the quad and a border (less to pad and transform).
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]
    # Pad by reflection where the quad leaves the image; blur the padding and fade it to the median
    # colour, so the mirrored content does not read as a second face or a hard seam.
    pad = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
           int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if settings.enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += pad[:2]
    # Transform at a multiple of the output size, then reduce (FFHQ: 4096 -> 1024).
    transform_size = size * max(1, settings.supersample)
    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten().tolist(),
                        Image.Resampling.BILINEAR)
    if transform_size != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _carried_row(row: pd.Series, q: FFHQQuad, size: int, name: str, outside: float) -> dict:
    """A landmarks row of the aligned crop: keypoints and box through the crop's similarity."""
    out = {c: row[c] for c in COLUMNS if c in row.index}
    points = q.to_crop(keypoints_array(row), size)
    out.update(dict(zip(KEYPOINT_COLUMNS, points.ravel().tolist())))
    corners = q.to_crop(np.array([[row.x1, row.y1], [row.x2, row.y1], [row.x2, row.y2], [row.x1, row.y2]]), size)
    out.update(x1=float(corners[:, 0].min()), y1=float(corners[:, 1].min()),
               x2=float(corners[:, 0].max()), y2=float(corners[:, 1].max()))
    out.update(file=name, width=size, height=size, source_file=row.file, eye_to_mouth_px=q.eye_to_mouth,
               crop_side_px=q.qsize, outside_fraction=outside)
    return out


def align_table(table: pd.DataFrame, image_dir: Path, out_images: Path, settings: AlignSettings,
                policy=None, progress: bool = True) -> pd.DataFrame:
    """Write the aligned crop of every ``ok`` row of a landmarks table into ``out_images`` (PNG,
    ids kept: ``sub/x.jpg`` -> ``sub/x.png``) and return the aligned landmarks table
    (:data:`ALIGN_COLUMNS`). Rows that are not ``ok`` keep their status; faces that cannot be
    aligned get ``face_too_small`` or ``cut_by_border`` with the reason in ``error``. Images are
    read as the landmarks stage read them (one reader, one ``policy``), so the points match."""
    from tqdm import tqdm

    from gmnr.data.images import ImagePolicy, image_root, read_image, unique_names, write_png_atomic

    policy = policy or ImagePolicy(non_square="crop")
    ok = table[table.status == "ok"]
    names, _ = unique_names(list(ok.file), ".png", flat=False)
    root = image_root(image_dir)
    rows = []
    for _, row in tqdm(table.iterrows(), total=len(table), desc="align (FFHQ)", unit="img", disable=not progress):
        base = {c: row[c] for c in COLUMNS if c in row.index}
        base["source_file"] = row.file
        if row.status != "ok":
            rows.append(base)
            continue
        points = keypoints_array(row)
        q = ffhq_quad(points)
        base.update(eye_to_mouth_px=q.eye_to_mouth, crop_side_px=q.qsize,
                    outside_fraction=q.outside_fraction(int(row.width), int(row.height)))
        problem = check_face(points, int(row.width), int(row.height), settings)
        if problem:
            rows.append({**base, "status": problem[0], "error": problem[1]})
            continue
        try:
            rgb = read_image(root / row.file, policy).rgb
        except Exception as exc:  # vanished or replaced since the landmarks stage: skip and say why
            rows.append({**base, "status": "unreadable", "error": f"at align: {type(exc).__name__}: {exc}"[:300]})
            continue
        if rgb.shape[:2] != (int(row.height), int(row.width)):
            rows.append({**base, "status": "unreadable",
                         "error": f"at align: the image is {rgb.shape[1]} x {rgb.shape[0]}, the landmarks were found "
                                  f"on {int(row.width)} x {int(row.height)} (changed since the landmarks stage)"})
            continue
        write_png_atomic(out_images / names[row.file], crop_ffhq(rgb, q, settings))
        rows.append(_carried_row(row, q, settings.resolution, names[row.file], base["outside_fraction"]))
    return pd.DataFrame(rows, columns=ALIGN_COLUMNS)


def pass_through(table: pd.DataFrame, image_dir: Path, out_images: Path) -> pd.DataFrame:
    """``align.mode: off`` (datasets that are aligned already): the ``ok`` rows' images are linked
    (hard links; copies across file systems) into ``out_images`` under their own ids, and the
    table is kept as it is, so pose and pack read one place whatever the mode."""
    from gmnr.data.images import image_root
    from gmnr.io import link_or_copy
    root = image_root(image_dir)
    out = table.copy()
    out["source_file"] = out["file"]
    for i in out.index[out.status == "ok"]:
        file = out.at[i, "file"]
        target = out_images / file
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            link_or_copy(root / file, target)
        except OSError as exc:  # vanished since the landmarks stage: skipped and counted, like any bad input
            out.at[i, "status"], out.at[i, "error"] = "unreadable", f"at align: {type(exc).__name__}: {exc}"[:300]
    for column in ("eye_to_mouth_px", "crop_side_px", "outside_fraction"):
        out[column] = np.nan
    return out[ALIGN_COLUMNS]


def summarize(table: pd.DataFrame, mode: str, seconds: float) -> dict:
    """Counts for the report and MLflow."""
    counts = table.status.value_counts().to_dict()
    done = table[table.status == "ok"]
    return {
        "mode": mode,
        "images_total": len(table),
        "aligned": int(counts.get("ok", 0)),
        "face_too_small": int(counts.get("face_too_small", 0)),
        "cut_by_border": int(counts.get("cut_by_border", 0)),
        "excluded_upstream": int((~table.status.isin(["ok", *SKIP_STATUSES])).sum()),
        # null when nothing was cropped (mode off): the photos were not measured
        "eye_to_mouth_px_median": float(done.eye_to_mouth_px.median()) if done.eye_to_mouth_px.notna().any() else None,
        "seconds": seconds,
    }
