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

from gmnr.data.images import ImagePolicy, ImageRefused, image_root, read_image, unique_names, write_png_atomic
from gmnr.io import write_json
from gmnr.preprocess.pose import CAM2WORLD_COLUMNS

CONVENTIONS = ("cam2world: OpenCV camera (x right, y down, z forward) to world (+y up, face towards +z), "
               "camera on a sphere of `radius` around `center`; intrinsics normalised by image width/height; "
               "angles in poses.csv are the camera's yaw/pitch/roll in radians (see gmnr/render/camera.py)")


def _legacy_claims(out_dir: Path) -> set[str] | None:
    """What a pack written before output records existed can be shown to have written: the images
    its dataset.json lists, and dataset.json itself."""
    import json
    data = json.loads((Path(out_dir) / "dataset.json").read_text())
    return {"dataset.json", *(f"images/{name}" for name, _ in data["labels"])}


def pack_dataset(image_dir: Path, poses: pd.DataFrame, out_dir: Path, resolution: int, fov_deg: float,
                 camera: dict, max_abs_yaw_deg: float, progress: bool = True, policy: ImagePolicy | None = None,
                 inputs: tuple[Path, ...] = ()) -> dict:
    """Write ``out_dir/images/*.png`` and ``out_dir/dataset.json``; return counts.

    Both are built in a staging folder and swapped in together (:mod:`gmnr.staging`), so a killed
    pack never leaves labels that disagree with the images, and an ``out_dir`` that overlaps the
    raw images (or holds files pack did not write) is refused before anything is read. Images are
    read exactly as the landmarks stage read them (one reader, one ``policy``). Raises when no
    image could be packed."""
    from PIL import Image
    from tqdm import tqdm

    from gmnr.render.camera import intrinsics_from_fov
    from gmnr.staging import StagedOutput

    policy = policy or ImagePolicy(non_square="crop")
    intrinsics = intrinsics_from_fov(fov_deg, 1, 1, normalized=True).double().numpy().ravel().tolist()
    excluded: dict[str, int] = {}
    for status, n in poses[poses.status != "ok"].status.value_counts().items():
        excluded[str(status)] = int(n)
    usable = poses[poses.status == "ok"]
    too_far = usable[np.degrees(usable.yaw).abs() > max_abs_yaw_deg] if len(usable) else usable
    if len(too_far):
        excluded["yaw_beyond_limit"] = len(too_far)
    usable = usable.drop(too_far.index)
    # One output name per image id: x.jpg and x.png, or sub/x.png and sub_x.png, must not share one.
    names, renamed = unique_names(list(usable.file), ".png")

    labels = []
    cropped = 0
    src_root = image_root(image_dir)
    with StagedOutput(out_dir, "pack", ["images", "dataset.json"], inputs=[image_dir, *inputs],
                      legacy=_legacy_claims) as staged:
        images_out = staged.path("images")
        images_out.mkdir(parents=True)
        for _, row in tqdm(usable.iterrows(), total=len(usable), desc="pack", unit="img", disable=not progress):
            name = names[row.file]
            try:
                loaded = read_image(src_root / row.file, policy)
            except ImageRefused as exc:  # replaced since the landmarks stage by something we refuse
                excluded[f"{exc.status}_at_pack"] = excluded.get(f"{exc.status}_at_pack", 0) + 1
                continue
            except Exception:  # vanished or became unreadable since the landmarks stage
                excluded["unreadable_at_pack"] = excluded.get("unreadable_at_pack", 0) + 1
                continue
            img = Image.fromarray(loaded.rgb)
            if img.size != (resolution, resolution):
                img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
            write_png_atomic(images_out / name, np.asarray(img))
            cropped += loaded.cropped
            labels.append([name, [float(row[c]) for c in CAM2WORLD_COLUMNS] + intrinsics])
        if not labels:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(excluded.items())) or "the poses table is empty"
            raise ValueError(f"no image could be packed from {image_dir} ({detail}); {out_dir} was left as it was")
        write_json({"labels": labels, "resolution": resolution, "camera": camera, "conventions": CONVENTIONS,
                    "excluded": excluded}, staged.path("dataset.json"))
    return {"images_packed": len(labels), "images_excluded": sum(excluded.values()),
            **{f"excluded_{k}": v for k, v in excluded.items()}, "resolution": resolution,
            "non_square_cropped": int(cropped), "renamed_name_collisions": len(renamed)}


def read_labels(out_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """File names, cam2world [N, 4, 4] and normalised intrinsics [N, 3, 3] of a packed set."""
    import json

    data = json.loads((Path(out_dir) / "dataset.json").read_text())
    names = [name for name, _ in data["labels"]]
    values = np.asarray([v for _, v in data["labels"]], dtype=np.float64).reshape(-1, 25)
    return names, values[:, :16].reshape(-1, 4, 4), values[:, 16:].reshape(-1, 3, 3)
