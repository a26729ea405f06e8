import json

import numpy as np
import pandas as pd
import pytest
import torch

from gmnr.data.images import write_png_atomic
from gmnr.preprocess.pack import pack_dataset, read_labels
from gmnr.preprocess.pose import CAM2WORLD_COLUMNS
from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world


def _raw(tmp_path, n):
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png_atomic(tmp_path / "raw" / "images" / f"{i:03d}.png", rng.integers(0, 255, (64, 64, 3), np.uint8))
    return tmp_path / "raw"


def _poses(statuses, yaws):
    rows = []
    for i, (status, yaw) in enumerate(zip(statuses, yaws)):
        row = {"file": f"{i:03d}.png", "status": status}
        if status == "ok":
            c2w = pose_to_cam2world(torch.tensor([yaw], dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64))
            row.update(yaw=yaw, pitch=0.1, roll=0.0, **dict(zip(CAM2WORLD_COLUMNS, c2w[0].ravel().tolist())))
        rows.append(row)
    return pd.DataFrame(rows)


def test_pack_resizes_labels_and_excludes_failures(tmp_path):
    raw = _raw(tmp_path, 5)
    poses = _poses(["ok", "no_face", "ok", "pose_fit_failed", "ok"], [0.1, 0, -0.3, 0, 1.7])
    out = tmp_path / "packed"
    summary = pack_dataset(raw, poses, out, 32, 12.6, {"fov_deg": 12.6}, max_abs_yaw_deg=60, progress=False)
    assert summary["images_packed"] == 2 and summary["images_excluded"] == 3
    assert summary["excluded_no_face"] == 1 and summary["excluded_pose_fit_failed"] == 1
    assert summary["excluded_yaw_beyond_limit"] == 1
    names, c2w, k = read_labels(out)
    assert names == ["000.png", "002.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    from PIL import Image
    assert Image.open(out / "images" / "000.png").size == (32, 32)
    expect = poses.loc[[0, 2], CAM2WORLD_COLUMNS].to_numpy().reshape(-1, 4, 4)
    assert np.allclose(c2w, expect)
    assert np.allclose(k[0], intrinsics_from_fov(12.6, 1, normalized=True).numpy())
    assert json.loads((out / "dataset.json").read_text())["excluded"]["no_face"] == 1


def test_repack_with_fewer_images_removes_stale_ones(tmp_path):
    raw = _raw(tmp_path, 3)
    out = tmp_path / "packed"
    pack_dataset(raw, _poses(["ok"] * 3, [0, 0, 0]), out, 16, 12.6, {}, 90, progress=False)
    pack_dataset(raw, _poses(["ok", "no_face", "no_face"], [0, 0, 0]), out, 16, 12.6, {}, 90, progress=False)
    assert [p.name for p in (out / "images").iterdir()] == ["000.png"]


def test_image_that_became_unreadable_is_counted_not_fatal(tmp_path):
    raw = _raw(tmp_path, 2)
    (raw / "images" / "001.png").write_bytes(b"garbage")
    summary = pack_dataset(raw, _poses(["ok", "ok"], [0, 0]), tmp_path / "p", 16, 12.6, {}, 90, progress=False)
    assert summary["images_packed"] == 1 and summary["excluded_unreadable_at_pack"] == 1


def test_missing_labels_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_labels(tmp_path)
