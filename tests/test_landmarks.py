"""The landmarks stage on faces with known geometry, and on the files that break naive code.

MTCNN needs TensorFlow, which segfaults when imported before torch in one process, so the
stage runs as `gmnr landmarks` in a subprocess; this test process only renders the faces."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from gmnr.data import synth
from gmnr.data.images import write_png_atomic
from gmnr.preprocess.landmarks import (KEYPOINT_COLUMNS, MTCNN_TO_CAMERA_PIXELS, choose_face, combine_views, mirror_back,
                                       summarize)
from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world, project
from tests.conftest import env_with_venv, run_cli


def _frontal_face(seed: int, size: int):
    head = synth.sample_head(np.random.default_rng([seed, 0]))
    c2w = pose_to_cam2world(torch.tensor([0.0]), torch.tensor([0.0]), 0.0, 1.0)[0]
    k = intrinsics_from_fov(12.6, size)
    out = synth.render_head(head, c2w, k, size, size)
    uv, _ = project(torch.from_numpy(synth.head_landmarks_3d(head)).float()[None], c2w[None], k)
    return out["rgb"], uv[0].numpy()


def test_choose_face_prefers_central_then_confident():
    rows = np.zeros((3, 16))
    rows[:, 1:5] = [[0, 0, 40, 40], [80, 80, 120, 120], [85, 85, 115, 115]]
    rows[:, 5] = [0.999, 0.95, 0.99]
    assert choose_face(rows, 200, 200) == 2


def _mtcnn_row(box, score, points):
    """One MTCNN numpy row: image id, x1, y1, x2, y2, score, x0..x4, y0..y4."""
    points = np.asarray(points, float)
    return np.concatenate([[0.0], box, [score], points[:, 0], points[:, 1]])


# Left eye, right eye, nose, mouth left, mouth right of a face a little left of centre in a 100 px image.
POINTS = [[30, 40], [50, 41], [41, 55], [32, 68], [49, 69]]


def test_mirror_back_undoes_the_mirror_and_keeps_every_name():
    width = 100
    row = _mtcnn_row([20, 25, 60, 80], 0.99, POINTS)
    # What MTCNN would report on the mirror image: x -> width - 1 - x, and the person's left eye (the
    # one on the image's left) is now on the right, so the names swap.
    mirrored_pts = [[width - 1 - x, y] for x, y in np.asarray(POINTS)[[1, 0, 2, 4, 3]]]
    on_mirror = _mtcnn_row([width - 1 - 60, 25, width - 1 - 20, 80], 0.99, mirrored_pts)
    back = mirror_back(on_mirror[None], width)[0]
    assert np.allclose(back, row)
    assert np.allclose(mirror_back(mirror_back(row[None], width), width)[0], row)  # an involution


def test_combine_views_averages_the_same_face_and_falls_back_to_either_view():
    w = h = 100
    face = _mtcnn_row([20, 25, 60, 80], 0.99, POINTS)
    shifted = _mtcnn_row([22, 25, 62, 80], 0.97, np.asarray(POINTS) + [2, 1])
    merged, views = combine_views(face[None], shifted[None], w, h, 0.9)
    assert views == 2
    assert np.allclose(merged[6:16], (face[6:16] + shifted[6:16]) / 2)
    assert merged[5] == face[5]  # the image's own confidence decides its status
    # Only the mirror image finds it with confidence: kept, from the mirror.
    weak = face.copy()
    weak[5] = 0.5
    assert combine_views(weak[None], shifted[None], w, h, 0.9)[1] == 1
    assert np.allclose(combine_views(weak[None], shifted[None], w, h, 0.9)[0], shifted)
    assert combine_views(np.empty((0, 16)), shifted[None], w, h, 0.9)[1] == 1
    # A different face in the mirror (no overlap) is not averaged in.
    elsewhere = _mtcnn_row([70, 70, 95, 95], 0.99, np.asarray(POINTS) + 50)
    merged, views = combine_views(face[None], elsewhere[None], w, h, 0.9)
    assert views == 1 and np.allclose(merged, face)
    # Neither view confident: the image's weak face is reported as it is; nothing at all: no face.
    merged, views = combine_views(weak[None], None, w, h, 0.9)
    assert views == 1 and merged[5] == 0.5
    assert combine_views(np.empty((0, 16)), np.empty((0, 16)), w, h, 0.9) == (None, 0)


def test_keypoint_error_compares_in_the_cameras_pixel_convention():
    """The projected true landmarks put pixel i's centre at i + 0.5, MTCNN at i: a detector that is
    exact in its own convention scores 0 px, and the error is not the half pixel's 0.71."""
    truth = pd.DataFrame({"file": ["a.png", "b.png"], "yaw": [0.0, 0.1]})
    for n, (x, y) in zip(["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"], POINTS):
        truth[f"{n}_x"], truth[f"{n}_y"] = [x + 0.5, x + 0.5], [y + 0.5, y + 0.5]
    table = truth[["file"]].assign(status="ok", n_faces=1)
    for c in KEYPOINT_COLUMNS:
        table[c] = truth[c] - MTCNN_TO_CAMERA_PIXELS
    summary = summarize(table, 1.0, truth)
    assert summary["keypoint_error_px_median"] == pytest.approx(0.0, abs=1e-9)
    table["nose_x"] += 3.0  # 3 px off on one point of five per image
    assert summarize(table, 1.0, truth)["keypoint_error_px_mean"] == pytest.approx(3.0 / 5)


@pytest.fixture(scope="module")
def landmark_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    images = root / "raw" / "images"
    face, truth = _frontal_face(3, 192)
    write_png_atomic(images / "face.png", face)
    grey, _ = _frontal_face(4, 192)
    write_png_atomic(images / "grey.png", grey.mean(-1).astype(np.uint8))
    rgba, _ = _frontal_face(5, 192)
    write_png_atomic(images / "rgba.png", np.concatenate([rgba, np.full((192, 192, 1), 255, np.uint8)], -1))
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    import imageio.v3 as iio
    jpeg = iio.imwrite("<bytes>", face, extension=".jpg")
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    write_png_atomic(images / "blank.png", np.full((192, 192, 3), 128, np.uint8))
    canvas = np.full((448, 448, 3), 90, np.uint8)
    canvas[128:320, 128:320] = face
    small, _ = _frontal_face(6, 192)
    canvas[4:100, 4:100] = small[::2, ::2]
    write_png_atomic(images / "two_faces.png", canvas)
    store = root / "mlflow.db"
    done = run_cli("landmarks", "--input", str(root / "raw"), "--output", str(root / "interim"),
                   "--reports", str(root / "reports"), "--no-progress",
                   env=env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{store}"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(root / "interim" / "landmarks.csv").set_index("file")
    report = json.loads((root / "reports" / "landmarks.json").read_text())
    return root, table, report, truth, store


def test_every_file_gets_a_row_and_bad_files_are_counted_not_fatal(landmark_run):
    _, table, report, _, _ = landmark_run
    assert table.loc["face.png", "status"] == "ok"
    assert table.loc["grey.png", "status"] == "ok"
    assert table.loc["rgba.png", "status"] == "ok"
    assert table.loc["corrupt.png", "status"] == "unreadable"
    assert table.loc["truncated.jpg", "status"] == "unreadable"
    assert table.loc["blank.png", "status"] == "no_face"
    assert report["images_total"] == 7 and report["unreadable"] == 2 and report["no_face"] == 1
    assert {s["file"] for s in report["skipped"]} == {"corrupt.png", "truncated.jpg", "blank.png"}
    assert "corrupt.png" in str(table.loc["corrupt.png", "error"]) or table.loc["corrupt.png", "error"]


def test_keypoints_land_on_the_true_landmarks(landmark_run):
    _, table, _, truth, _ = landmark_run
    got = table.loc["face.png", KEYPOINT_COLUMNS].to_numpy(float).reshape(5, 2)
    interocular = np.linalg.norm(truth[1] - truth[0])
    assert np.linalg.norm(got - truth, axis=1).max() < 0.25 * interocular, (got, truth)
    assert table.loc["face.png", "views"] == 2  # found on the image and on its mirror, averaged
    assert table.loc["blank.png", "views"] == 0


def test_of_several_faces_the_central_one_is_kept_and_recorded(landmark_run):
    _, table, report, _, _ = landmark_run
    row = table.loc["two_faces.png"]
    assert row.status == "ok" and row.n_faces >= 2
    centre = np.array([(row.x1 + row.x2) / 2, (row.y1 + row.y2) / 2])
    assert np.linalg.norm(centre - 224) < 40
    assert report["multiple_faces"] >= 1


def test_keypoint_files_for_deep3dfacerecon(landmark_run):
    root, table, _, _, _ = landmark_run
    txt = root / "interim" / "detections" / "face.txt"
    values = np.loadtxt(txt)
    assert values.shape == (5, 2)
    assert np.allclose(values, table.loc["face.png", KEYPOINT_COLUMNS].to_numpy(float).reshape(5, 2), atol=0.01)
    assert not (root / "interim" / "detections" / "blank.txt").exists()


def test_the_stage_run_is_in_mlflow_with_its_counts(landmark_run):
    from mlflow.tracking import MlflowClient
    _, _, _, _, store = landmark_run
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("gmnr").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["stage"] == "landmarks" and run.info.status == "FINISHED"
    assert run.data.metrics["unreadable"] == 2 and run.data.metrics["no_face"] == 1
    assert run.data.params["landmarks.min_confidence"] == "0.9"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"skipped.json", "landmarks_sheet.png"} <= names
