"""The training set: images at the training resolution and one labels file.

``dataset.json`` follows the EG3D/GMPI label layout so existing loaders read it::

    {"labels": [["000000.png", [16 x cam2world (row-major), 9 x normalized intrinsics]], ...],
     "resolution": 128, "camera": {...}, "conventions": "...", "excluded": {...}}

Intrinsics are normalised by the image size (focal / width, 0.5 centre), so labels do not
change with the resolution. Images that failed any earlier stage are left out and counted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gmnr.data.images import image_root, write_png_atomic
from gmnr.preprocess.pose import CAM2WORLD_COLUMNS

CONVENTIONS = ("cam2world: OpenCV camera (x right, y down, z forward) to world (+y up, face towards +z), "
               "camera on a sphere of `radius` around `center`; intrinsics normalised by image width/height; "
               "angles in poses.csv are the camera's yaw/pitch/roll in radians (see gmnr/render/camera.py)")


def pack_dataset(image_dir: Path, poses: pd.DataFrame, out_dir: Path, resolution: int, fov_deg: float,
                 camera: dict, max_abs_yaw_deg: float, progress: bool = True) -> dict:
    """Write ``out_dir/images/*.png`` and ``out_dir/dataset.json``; return counts."""
    from PIL import Image
    from tqdm import tqdm

    from gmnr.io import write_json
    from gmnr.render.camera import intrinsics_from_fov

    intrinsics = intrinsics_from_fov(fov_deg, 1, 1, normalized=True).double().numpy().ravel().tolist()
    excluded: dict[str, int] = {}
    for status, n in poses[poses.status != "ok"].status.value_counts().items():
        excluded[str(status)] = int(n)
    usable = poses[poses.status == "ok"]
    too_far = usable[np.degrees(usable.yaw).abs() > max_abs_yaw_deg]
    if len(too_far):
        excluded["yaw_beyond_limit"] = len(too_far)
    usable = usable.drop(too_far.index)

    images_out = out_dir / "images"
    images_out.mkdir(parents=True, exist_ok=True)
    keep = set()
    labels = []
    src_root = image_root(image_dir)
    for _, row in tqdm(usable.iterrows(), total=len(usable), desc="pack", unit="img", disable=not progress):
        name = Path(row.file).with_suffix(".png").as_posix().replace("/", "_")
        try:
            with Image.open(src_root / row.file) as img:
                img = img.convert("RGB")
                if img.size != (resolution, resolution):
                    img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
                write_png_atomic(images_out / name, np.asarray(img))
        except Exception:  # vanished or became unreadable since the landmarks stage
            excluded["unreadable_at_pack"] = excluded.get("unreadable_at_pack", 0) + 1
            continue
        keep.add(name)
        labels.append([name, [float(row[c]) for c in CAM2WORLD_COLUMNS] + intrinsics])
    for stale in images_out.iterdir():  # a rerun with fewer images must not keep old ones
        if stale.name not in keep:
            stale.unlink()
    write_json({"labels": labels, "resolution": resolution, "camera": camera, "conventions": CONVENTIONS,
                "excluded": excluded}, out_dir / "dataset.json")
    return {"images_packed": len(labels), "images_excluded": sum(excluded.values()),
            **{f"excluded_{k}": v for k, v in excluded.items()}, "resolution": resolution}


def read_labels(out_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """File names, cam2world [N, 4, 4] and normalised intrinsics [N, 3, 3] of a packed set."""
    import json

    data = json.loads((Path(out_dir) / "dataset.json").read_text())
    names = [name for name, _ in data["labels"]]
    values = np.asarray([v for _, v in data["labels"]], dtype=np.float64).reshape(-1, 25)
    return names, values[:, :16].reshape(-1, 4, 4), values[:, 16:].reshape(-1, 3, 3)
