"""Hostile inputs, kills and overlaps (issue 19): nothing a user owns is deleted, nothing is
mislabelled, nothing hangs. Each case asserts what was kept and that the message names the file
or key. Stages run in-process through ``gmnr.cli.main`` (exit code and stderr as a user sees
them) or through the library, on images of a few pixels."""
from __future__ import annotations

import json
import os
import pickle
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gmnr import config
from gmnr.cli import main
from gmnr.data.images import ImagePolicy, ImageRefused, read_image, unique_names, write_png_atomic
from gmnr.preprocess.pack import pack_dataset, read_labels
from gmnr.preprocess.pose import CAM2WORLD_COLUMNS
from gmnr.staging import OutputConflict, StagedOutput

TINY = ["pack.resolution=16", "gmpi.pretrained=null", "gmpi.z_dim=16", "gmpi.w_dim=16", "gmpi.mapping_layers=2",
        "gmpi.channel_base=256", "gmpi.channel_max=32", "gmpi.planes_train=4", "gmpi.planes_eval=4",
        "train.log_every=1", "train.grid_latents=2", "train.grid_views=2", "train.threads=1",
        "train.views_per_latent=2", "train.r1_interval=2", "train.batch_per_gpu=2", "model=gmpi",
        "train.sample_every=1000"]


# ---------------------------------------------------------------------------------------- helpers
def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes: what must survive a refused stage unchanged."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main([argv[0], "--no-progress", *argv[1:]])
    err = capsys.readouterr().err
    return code, err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    return lines[0]


def _png16(a: np.ndarray) -> bytes:
    """A PNG of a uint16 array (grey, grey+alpha, RGB, RGBA), written by hand: imageio and Pillow
    do not write 16-bit colour PNGs."""
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape
    raw = a.astype(">u2").reshape(h, -1).tobytes()
    stride = w * c * 2
    data = b"".join(b"\x00" + raw[i * stride:(i + 1) * stride] for i in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")


def _bomb_header(path: Path, side: int = 10000) -> None:
    """A PNG whose header declares side x side pixels (its pixel data is never reached)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def _solid(path: Path, rgb, size=(8, 8), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(rgb)).save(path, format=fmt)


def _poses(files: list[str]) -> pd.DataFrame:
    from gmnr.render.camera import pose_to_cam2world
    rows = []
    for i, f in enumerate(files):
        yaw = 0.3 * (i - len(files) / 2) / max(len(files), 1)  # a different camera per image
        c2w = pose_to_cam2world(torch.tensor([yaw], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
        rows.append({"file": f, "status": "ok", "yaw": yaw, "pitch": 0.0, "roll": 0.0,
                     **dict(zip(CAM2WORLD_COLUMNS, c2w[0].ravel().tolist()))})
    return pd.DataFrame(rows)


class _StubDetector:
    """MTCNN's interface, one central face per image: the landmarks stage without TensorFlow."""

    def detect_faces(self, images, box_format, output_type, min_face_size):
        rows = []
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            rows.append([i, w * .2, h * .2, w * .8, h * .8, .99, w * .35, w * .65, w * .5, w * .38, w * .62,
                         h * .4, h * .4, h * .55, h * .7, h * .7])
        return np.asarray(rows)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A packed set of 8 discs at 16 px, what `gmnr pack` writes, for the training cases."""
    root = tmp_path_factory.mktemp("hostile_packed")
    rng = np.random.default_rng(0)
    files = []
    for i in range(8):
        img = np.zeros((16, 16, 3), np.uint8) + rng.integers(0, 255, 3).astype(np.uint8)
        yy, xx = np.mgrid[:16, :16]
        img[(yy - 8) ** 2 + (xx - 8) ** 2 < 20] = [200, 150, 120]
        write_png_atomic(root / "raw" / "images" / f"{i:03d}.png", img)
        files.append(f"{i:03d}.png")
    pack_dataset(root / "raw", _poses(files), root / "packed", 16, 12.6, {}, 90, progress=False)
    return root / "packed"


# --------------------------------------------------------------- 1. outputs: ownership and overlap
def test_synth_into_a_folder_of_photos_refuses_and_deletes_nothing(tmp_path, capsys):
    photos = tmp_path / "my_photos"
    for i in range(6):
        _solid(photos / "images" / f"{i:06d}.png", (i * 40, 0, 0))
    before = _snapshot(photos)
    code, err = _cli(capsys, "synth", "--output", str(photos), "-S", "synth.count=1", "-S", "synth.resolution=32")
    line = _error_line(err)
    assert code == 2 and "my_photos/images/000000.png" in line and "not an output of gmnr synth" in line
    assert _snapshot(photos) == before


def test_synth_beside_a_users_files_keeps_them(tmp_path):
    from gmnr.data import synth
    photos = tmp_path / "my_photos"
    _solid(photos / "a.jpg", (1, 2, 3), fmt="JPEG")
    before = _snapshot(photos)
    synth.generate(photos, 1, 32, 0, synth.FFHQ_CAMERA, 0.0, progress=False)
    after = _snapshot(photos)
    assert {k: after[k] for k in before} == before and "images/000000.png" in after
    assert not [p for p in photos.iterdir() if p.name.endswith(".staging")]


def test_landmarks_refuses_an_output_holding_a_users_file_before_any_work(tmp_path, capsys):
    raw = tmp_path / "raw" / "images"
    _solid(raw / "a.png", (9, 9, 9))
    userout = tmp_path / "userout"
    (userout / "detections").mkdir(parents=True)
    (userout / "detections" / "important.txt").write_text("mine")
    started = time.perf_counter()
    code, err = _cli(capsys, "landmarks", "--input", str(tmp_path / "raw"), "--output", str(userout),
                     "--reports", str(tmp_path / "reports"))
    line = _error_line(err)
    assert code == 2 and "userout/detections/important.txt" in line
    assert (userout / "detections" / "important.txt").read_text() == "mine"
    assert sorted(p.name for p in userout.iterdir()) == ["detections"]  # no landmarks.csv, no staging
    assert time.perf_counter() - started < 5  # refused before loading the detector


@pytest.mark.parametrize("layout", ["same", "output_inside_input", "input_inside_output"])
def test_pack_refuses_an_output_overlapping_its_input(tmp_path, capsys, layout):
    raw = tmp_path / "raw"
    for i in range(3):
        _solid(raw / "images" / f"{i:03d}.png", (i * 50, 10, 10), size=(64, 64))
    poses = tmp_path / "poses.csv"
    _poses([f"{i:03d}.png" for i in range(3)]).to_csv(poses, index=False)
    output, image_dir = {"same": (raw, raw), "output_inside_input": (raw / "packed", raw),
                         "input_inside_output": (tmp_path, raw / "images")}[layout]
    before = _snapshot(raw)
    code, err = _cli(capsys, "pack", "--input", str(image_dir), "--poses", str(poses), "--output", str(output),
                     "-S", "pack.resolution=16", "--reports", str(tmp_path / "reports"))
    line = _error_line(err)
    assert code == 2 and any(f"{w} input" in line for w in ("overlaps", "contains", "is")) and str(image_dir) in line
    assert _snapshot(raw) == before


def test_a_rerun_replaces_only_what_the_stage_wrote(tmp_path):
    raw = tmp_path / "raw"
    for i in range(3):
        _solid(raw / "images" / f"{i:03d}.png", (i * 50, 10, 10))
    out = tmp_path / "packed"
    (out).mkdir()
    (out / "notes.txt").write_text("the user's")
    pack_dataset(raw, _poses(["000.png", "001.png", "002.png"]), out, 8, 12.6, {}, 90, progress=False)
    pack_dataset(raw, _poses(["000.png"]), out, 8, 12.6, {}, 90, progress=False)  # fewer: stale ones go
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000.png"]
    assert (out / "notes.txt").read_text() == "the user's"
    (out / "images" / "holiday.jpg").write_bytes(b"user photo")  # dropped in by hand after the run
    with pytest.raises(OutputConflict, match=r"packed/images/holiday\.jpg is not an output of gmnr pack"):
        pack_dataset(raw, _poses(["000.png", "001.png"]), out, 8, 12.6, {}, 90, progress=False)
    assert (out / "images" / "holiday.jpg").read_bytes() == b"user photo"
    assert read_labels(out)[0] == ["000.png"]  # the previous output is untouched


def test_an_output_from_before_records_is_adopted_only_as_far_as_its_index_goes(tmp_path):
    raw = tmp_path / "raw"
    _solid(raw / "images" / "000.png", (50, 10, 10))
    out = tmp_path / "packed"
    pack_dataset(raw, _poses(["000.png"]), out, 8, 12.6, {}, 90, progress=False)
    (out / ".gmnr-pack.json").unlink()  # as an older gmnr left it
    pack_dataset(raw, _poses(["000.png"]), out, 8, 12.6, {}, 90, progress=False)  # dataset.json vouches
    (out / ".gmnr-pack.json").unlink()
    (out / "images" / "x.png").write_bytes(b"not listed")
    with pytest.raises(OutputConflict, match=r"images/x\.png"):
        pack_dataset(raw, _poses(["000.png"]), out, 8, 12.6, {}, 90, progress=False)
    assert (out / "images" / "x.png").read_bytes() == b"not listed"


def _two_entry_output(out: Path, version: str) -> None:
    with StagedOutput(out, "demo", ["table.csv", "files"]) as s:
        s.path("table.csv").write_text(version)
        s.path("files").mkdir()
        (s.path("files") / f"{version}.txt").write_text(version)


@pytest.mark.parametrize("kill_at", range(1, 8))
def test_a_swap_killed_at_any_rename_leaves_the_old_or_the_new_output_whole(tmp_path, monkeypatch, kill_at):
    """The swap's renames (journal, table.csv out and in, files/ out and in, the record) with a
    "kill" at each: the next run presents v1 whole (killed before the journal) or v2 whole."""
    out = tmp_path / "out"
    _two_entry_output(out, "v1")
    import gmnr.staging as staging
    real_replace, calls = os.replace, []

    def killed_at(a, b):
        calls.append((a, b))
        if len(calls) == kill_at:
            raise KeyboardInterrupt
        real_replace(a, b)
    monkeypatch.setattr(staging.os, "replace", killed_at)
    try:
        _two_entry_output(out, "v2")
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(staging.os, "replace", real_replace)
    done = StagedOutput(out, "demo", ["table.csv", "files"]).preflight()
    version = (out / "table.csv").read_text()
    assert version == ("v1" if kill_at == 1 else "v2"), done
    assert sorted(p.name for p in (out / "files").iterdir()) == [f"{version}.txt"]
    assert sorted(p.name for p in out.iterdir()) == [".gmnr-demo.json", "files", "table.csv"]
    assert json.loads((out / ".gmnr-demo.json").read_text())["files"] == ["files/" + version + ".txt", "table.csv"]


def test_an_unfinished_staging_folder_is_discarded_and_the_old_output_kept(tmp_path):
    out = tmp_path / "out"
    _two_entry_output(out, "v1")
    with pytest.raises(RuntimeError):
        with StagedOutput(out, "demo", ["table.csv", "files"]) as s:
            s.path("table.csv").write_text("half")
            raise RuntimeError("killed while writing")
    assert (out / "table.csv").read_text() == "v1"
    (out / ".gmnr-demo.staging" / "new").mkdir(parents=True)  # what a kill -9 leaves
    (out / ".gmnr-demo.staging" / "new" / "table.csv").write_text("half")
    assert "discarded" in StagedOutput(out, "demo", ["table.csv", "files"]).preflight()
    assert (out / "table.csv").read_text() == "v1" and not (out / ".gmnr-demo.staging").exists()


def test_a_second_writer_of_the_same_output_is_refused_at_once(tmp_path):
    out = tmp_path / "out"
    with StagedOutput(out, "demo", ["table.csv"]) as s:
        s.path("table.csv").write_text("first")
        with pytest.raises(OutputConflict, match="another gmnr demo is writing"):
            StagedOutput(out, "demo", ["table.csv"]).preflight()
    assert (out / "table.csv").read_text() == "first"


# ------------------------------------------------------------- 2. ids, one reader, non-square
def test_colliding_image_ids_get_their_own_images_and_labels(tmp_path):
    raw = tmp_path / "raw"
    colours = {"x.jpg": (200, 0, 0), "x.png": (0, 200, 0), "sub/x.png": (0, 0, 200), "sub_x.png": (200, 200, 0)}
    for name, rgb in colours.items():
        _solid(raw / "images" / name, rgb, fmt="JPEG" if name.endswith(".jpg") else "PNG")
    poses = _poses(sorted(colours))
    summary = pack_dataset(raw, poses, tmp_path / "packed", 8, 12.6, {}, 90, progress=False)
    names, c2w, _ = read_labels(tmp_path / "packed")
    assert summary["images_packed"] == 4 and summary["renamed_name_collisions"] == 2
    assert len(set(names)) == 4 and sorted(names) == sorted(p.name for p in (tmp_path / "packed" / "images").iterdir())
    mapping, _ = unique_names(sorted(colours), ".png")
    for i, source in enumerate(sorted(colours)):  # each label points at its own image, with its own camera
        pixel = np.asarray(Image.open(tmp_path / "packed" / "images" / mapping[source]))[4, 4]
        assert np.abs(pixel.astype(int) - colours[source]).max() <= 3, source
        assert np.allclose(c2w[names.index(mapping[source])].ravel(), poses.loc[i, CAM2WORLD_COLUMNS].to_numpy(float))


def test_keypoint_files_of_colliding_ids_do_not_overwrite_each_other(tmp_path):
    from gmnr.preprocess.landmarks import KEYPOINT_COLUMNS, export_keypoint_txt
    table = pd.DataFrame([{"file": f, "status": "ok", **{c: float(i) for c in KEYPOINT_COLUMNS}}
                          for i, f in enumerate(["x.jpg", "x.png"])])
    result = export_keypoint_txt(table, tmp_path / "detections")
    assert result["renamed"] == 1
    assert sorted((p.name, p.read_text().split()[0]) for p in (tmp_path / "detections").iterdir()) == \
        [("x-1.txt", "1.00"), ("x.txt", "0.00")]


def _cmyk_jpeg(path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, format="JPEG")  # pure red in CMYK


def _grey_alpha(path):
    Image.new("LA", (8, 8), (100, 255)).save(path)


def _palette_transparent(path):
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 0, 180, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.save(path, transparency=0)  # index 0 transparent: composited over white


@pytest.mark.parametrize("name, make, expected", [
    ("grey16.png", lambda p: p.write_bytes(_png16(np.full((8, 8), 30000, np.uint16))), (117, 117, 117)),
    ("rgb16.png", lambda p: p.write_bytes(_png16(np.full((8, 8, 3), [65535, 32896, 0], np.uint16))), (255, 128, 0)),
    ("cmyk.jpg", _cmyk_jpeg, (255, 0, 0)),
    ("greyalpha.png", _grey_alpha, (100, 100, 100)),
    ("palette.png", _palette_transparent, (0, 180, 0)),
])
def test_one_reader_decodes_every_mode_the_same_for_every_stage(tmp_path, name, make, expected):
    path = tmp_path / "raw" / "images" / name
    path.parent.mkdir(parents=True)
    make(path)
    rgb = read_image(path).rgb
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3)
    assert np.abs(rgb[4, 4].astype(int) - expected).max() <= 2
    pack_dataset(tmp_path / "raw", _poses([name]), tmp_path / "packed", 8, 12.6, {}, 90, progress=False)
    packed = np.asarray(Image.open(tmp_path / "packed" / "images" / Path(name).with_suffix(".png").name))
    assert np.abs(packed[4, 4].astype(int) - expected).max() <= 3  # not white, not a dropped channel
    if name == "palette.png":
        assert tuple(rgb[0, 0]) == (255, 255, 255)


def test_non_square_images_are_centre_cropped_or_refused_and_counted(tmp_path):
    raw = tmp_path / "raw" / "images"
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = [255, 0, 0]  # only the outer quarters are red: a centre crop has none of it
    wide[:, 30:] = [255, 0, 0]
    wide[:, 10:30] = [0, 0, 255]
    write_png_atomic(raw / "wide.png", wide)
    _solid(raw / "square.png", (0, 255, 0), size=(20, 20))
    from gmnr.preprocess.landmarks import DetectorSettings, run_landmarks, summarize
    cropped = run_landmarks(tmp_path / "raw", DetectorSettings(), _StubDetector(), False, ImagePolicy(non_square="crop"))
    row = cropped.set_index("file").loc["wide.png"]
    assert (row.status, row.width, row.height, row.cropped) == ("ok", 20, 20, 1)
    assert summarize(cropped, 1.0)["non_square_cropped"] == 1
    summary = pack_dataset(tmp_path / "raw", _poses(["square.png", "wide.png"]), tmp_path / "packed", 20, 12.6, {},
                           90, progress=False)
    assert summary["non_square_cropped"] == 1
    assert (np.asarray(Image.open(tmp_path / "packed" / "images" / "wide.png"))[..., 0] == 0).all()  # no red
    refused = run_landmarks(tmp_path / "raw", DetectorSettings(), _StubDetector(), False,
                            ImagePolicy(non_square="refuse"))
    row = refused.set_index("file").loc["wide.png"]
    assert row.status == "non_square" and "images.non_square" in row.error
    assert summarize(refused, 1.0)["non_square_refused"] == 1


# ------------------------------------------------------------------------------- 3. limits
def test_a_decompression_bomb_and_a_fifo_are_refused_without_decoding(tmp_path):
    raw = tmp_path / "raw" / "images"
    raw.mkdir(parents=True)
    _bomb_header(raw / "bomb.png")
    os.mkfifo(raw / "pipe.png")
    _solid(raw / "face.png", (90, 60, 50), size=(32, 32))
    from gmnr.preprocess.landmarks import DetectorSettings, run_landmarks
    started = time.perf_counter()
    table = run_landmarks(tmp_path / "raw", DetectorSettings(), _StubDetector(), False, ImagePolicy())
    assert time.perf_counter() - started < 5
    rows = table.set_index("file")
    assert rows.loc["face.png", "status"] == "ok"
    assert rows.loc["bomb.png", "status"] == "too_large"
    assert "100000000 pixels exceeds images.max_pixels = 25000000; not decoded" in rows.loc["bomb.png", "error"]
    assert rows.loc["pipe.png", "status"] == "refused" and "not a regular file" in rows.loc["pipe.png", "error"]
    with pytest.raises(ImageRefused, match="not a regular file"):
        read_image(raw / "pipe.png")


def test_a_zip_bomb_is_refused_with_nothing_extracted(tmp_path):
    from gmnr.data.download import UnsafeArchiveError, safe_extract
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", b"\x00" * (20 << 20))  # 20 MB of zeros: about 20 KB packed
    with pytest.raises(UnsafeArchiveError, match=r"more than download\.max_extract_ratio = 100"):
        safe_extract(bomb, tmp_path / "out")
    with pytest.raises(UnsafeArchiveError, match=r"more than download\.max_extract_bytes = 1000"):
        safe_extract(bomb, tmp_path / "out", max_bytes=1000, max_ratio=1e9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]  # no folder, no partial extraction


# ------------------------------------------------------------------------------- 4. params
@pytest.mark.parametrize("override, named", [
    ("train.steps=true", "'train.steps': Value error, expected a number or text, got a boolean"),
    ("train.amp=1", "'train.amp': Value error, expected true or false"),
    ("train.lr_g=.inf", "'train.lr_g': Input should be a finite number"),
    ("train.r1_gamma=.nan", "'train.r1_gamma': Input should be a finite number"),
    ("train.ema_kimg=.inf", "'train.ema_kimg': Input should be a finite number"),
    ("seed=123456789012345678901", "'seed': Input should be less than or equal to 4294967295"),
    ("pack.resolution=24", "pack.resolution must be a power of two"),
    ("train.batch_per_gpu=6 gmpi.mbstd_group_size=4",
     "train.batch_per_gpu = 6 is not a multiple of gmpi.mbstd_group_size = 4"),
    ("train.batch_per_gpu=4 train.views_per_latent=3 gmpi.mbstd_group_size=8",
     "train.batch_per_gpu x train.views_per_latent = 12 is not a multiple of gmpi.mbstd_group_size = 8"),
    ("train.betas=[true,0.9]", "'train.betas': Value error, expected a number or text, got a boolean"),
    ("train.betas=[0.0,", "override 'train.betas=[0.0,': the value is not valid YAML"),
])
def test_params_that_would_validate_and_then_fail_are_refused_naming_the_key(override, named):
    with pytest.raises(config.ParamsError) as err:
        config.load_params(overrides=[*override.split(" "), "models=[gmpi]"])
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_refused_param_exits_2_before_anything_is_written(tmp_path, capsys):
    code, err = _cli(capsys, "synth", "--output", str(tmp_path / "out"), "-S", "train.lr_g=.inf")
    assert code == 2 and "'train.lr_g'" in _error_line(err) and not (tmp_path / "out").exists()


# -------------------------------------------------------------------- 5. training and checkpoints
def _trainer(packed, run_dir, *extra):
    from gmnr.train import distributed as dist
    from gmnr.train.loop import Trainer
    params = config.load_params(overrides=[*TINY, *extra])
    return Trainer(params, packed, run_dir, dist.init("cpu"))


def test_a_non_finite_loss_stops_training_naming_step_and_loss_and_keeps_the_last_checkpoint(packed, tmp_path):
    from gmnr.train.checkpoint import NonFiniteError, list_checkpoints, load_checkpoint
    from gmnr.train.loop import train
    # A finite but absurd generator learning rate: step 1 is finite (and checkpointed), its update
    # sends G to ~1e30, and a later step's losses are NaN or inf.
    params = config.load_params(overrides=[*TINY, "train.steps=6", "train.checkpoint_every=1", "train.lr_g=1e30",
                                           "train.grad_clip=null", "train.device=cpu"])
    with pytest.raises(NonFiniteError) as err:
        train(params, packed, tmp_path / "run", progress=False)
    message = str(err.value)
    step = int(message.split(":")[0].removeprefix("step "))
    assert 2 <= step < 6 and ("loss_" in message or "grad_norm" in message), message
    assert "= nan" in message or "= inf" in message, message
    saved = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in saved] == list(range(1, step))  # nothing of the failing step
    assert not (tmp_path / "run" / "final.pt").exists()
    for _, path in saved:  # what was kept is finite
        assert all(torch.isfinite(t).all() for t in load_checkpoint(path)["G"].values() if t.is_floating_point())


def _damage(path: Path, how: str) -> None:
    from gmnr.train.checkpoint import load_checkpoint
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        state = load_checkpoint(path)
        if how == "no_opt_G":
            del state["opt_G"]
        elif how == "nan_weights":
            next(t for t in state["G"].values() if t.is_floating_point()).fill_(float("nan"))
        torch.save(state, path)


@pytest.mark.parametrize("how, why", [("empty", "empty file"), ("truncated", "not a loadable gmnr checkpoint"),
                                      ("no_opt_G", "the key 'opt_G' is missing"), ("nan_weights", "holds NaN or inf")])
def test_resume_falls_back_to_the_newest_valid_checkpoint_saying_which_and_why(packed, tmp_path, capsys, how, why):
    from gmnr.train.checkpoint import checkpoint_path, save_checkpoint
    run = tmp_path / "run"
    trainer = _trainer(packed, run)
    for step in (1, 2):
        trainer.step = step
        save_checkpoint(run / "checkpoints", step, trainer.state(), keep_last=5)
    newest = checkpoint_path(run / "checkpoints", 2)
    _damage(newest, how)
    resumed = _trainer(packed, run)
    assert resumed.resume() == checkpoint_path(run / "checkpoints", 1) and resumed.step == 1
    line = next(ln for ln in capsys.readouterr().err.splitlines() if "skipping checkpoint" in ln)
    assert str(newest) in line and why in line
    kept = list((run / "checkpoints").glob("skipped-*/step-000000002.pt"))
    assert len(kept) == 1 and not newest.exists()  # moved aside, not deleted


def test_orphaned_temporary_files_are_removed_on_resume(packed, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "samples").mkdir()
    dead = 2 ** 22 + 12345  # above any pid this kernel hands out by default
    orphans = [run / "checkpoints" / f".step-000000004.pt.tmp-{dead}", run / ".final.pt.tmp",
               run / "samples" / ".step-000004.png.tmp"]
    live = run / "checkpoints" / f".step-000000004.pt.tmp-{os.getppid()}"  # a writer still running
    for p in [*orphans, live]:
        p.write_bytes(b"partial")
    (run / "samples" / "mine.txt").write_text("kept")
    assert _trainer(packed, run).resume() is None
    assert not any(p.exists() for p in orphans) and live.exists() and (run / "samples" / "mine.txt").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_malicious_pt_is_refused_in_one_line_naming_the_global(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"G_ema": {}, "D": {}, "x": _Payload()}, evil)
    code, err = _cli(capsys, "export-weights", "--checkpoint", str(evil), "--output", str(tmp_path / "w.pt"))
    line = _error_line(err)
    assert code == 2 and str(evil) in line and ("'posix.system'" in line or "'os.system'" in line)
    assert "weights_only" not in line and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "w.pt").exists()


def test_a_malicious_nvlabs_pickle_exits_2_with_one_line(packed, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _Payload()}, protocol=2))
    code, err = _cli(capsys, "train", "--input", str(packed), "--output", str(tmp_path / "run"),
                     *sum((["-S", o] for o in TINY), []), "-S", f"gmpi.pretrained={evil}", "-S", "train.steps=1")
    line = _error_line(err)
    assert code == 2 and "refusing global" in line and "system" in line and "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()


def test_a_pretrained_file_that_matches_no_tensors_is_refused(packed, tmp_path):
    from gmnr.models.pretrained import init_from_pretrained
    trainer = _trainer(packed, tmp_path / "run")
    empty = tmp_path / "empty.pt"
    torch.save({"G_ema": {}, "D": {}}, empty)
    with pytest.raises(ValueError, match=r"empty\.pt: holds no generator weights"):
        init_from_pretrained(trainer.G, trainer.D, empty)


# ---------------------------------------------------------------------- 6. empty and tiny sets
def test_empty_sets_fail_fast_naming_the_folder(tmp_path, capsys):
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "images" / "notes.txt").write_text("no images here")
    code, err = _cli(capsys, "landmarks", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "interim"),
                     "--reports", str(tmp_path / "reports"))
    assert code == 2 and "no images" in _error_line(err) and str(tmp_path / "raw") in err
    poses = pd.DataFrame([{"file": "a.png", "status": "no_face"}])
    with pytest.raises(ValueError, match=r"no image could be packed .*no_face: 1"):
        pack_dataset(tmp_path / "raw", poses, tmp_path / "packed", 8, 12.6, {}, 90, progress=False)
    assert not (tmp_path / "packed" / "dataset.json").exists()


def test_pose_with_no_usable_landmarks_fails(tmp_path, capsys):
    from gmnr.preprocess.landmarks import COLUMNS
    interim = tmp_path / "interim"
    interim.mkdir()
    pd.DataFrame([{"file": "a.png", "status": "no_face"}], columns=COLUMNS).to_csv(interim / "landmarks.csv",
                                                                                  index=False)
    code, err = _cli(capsys, "pose", "--input", str(tmp_path / "raw"), "--landmarks", str(interim / "landmarks.csv"),
                     "--output", str(interim), "--reports", str(tmp_path / "reports"))
    assert code == 2 and "has no face to estimate a pose from" in _error_line(err) and "no_face: 1" in err
    assert not (interim / "poses.csv").exists()


def test_fid_from_a_tiny_set_is_reported_with_a_loud_warning():
    from gmnr.eval.metrics.fid import FID_MIN_IMAGES, small_set_warning
    assert FID_MIN_IMAGES == 2048 and small_set_warning(5000, 5000) is None
    assert "FID/KID from 3 real and 160 generated images, fewer than 2048" in small_set_warning(3, 160)


# ---------------------------------------------------------------------------- 7. tracking store
def test_an_unusable_tracking_store_is_detected_once_and_the_stage_goes_on(monkeypatch):
    from gmnr import tracking
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/gmnr-test/mlflow.db")
    params = config.load_params()
    started = time.perf_counter()
    with pytest.warns(UserWarning, match="unreachable") as caught:
        for _ in range(2):
            with tracking.stage_run("test", params, sections=("seed",)) as run:
                run.log_metrics({"x": 1.0})
    assert time.perf_counter() - started < 10  # MLflow alone retries for about 100 s
    assert not run.active and len([w for w in caught if "unreachable" in str(w.message)]) == 2
    assert tracking._PROBED["sqlite:////proc/gmnr-test/mlflow.db"] is not None
