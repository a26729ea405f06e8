"""One function per pipeline stage: read inputs, call the library, write outputs, report, track.

Every stage takes explicit input/output paths (the CLI fills them from params.yaml), writes a
JSON report (a DVC metrics file) and logs one MLflow run. Heavy imports happen inside the
functions so that ``gmnr landmarks`` never loads torch next to TensorFlow.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from gmnr.config import Params
from gmnr.io import read_csv, write_csv, write_json
from gmnr.tracking import stage_run

MAX_LISTED = 200  # skipped files listed by name in a report; all are counted


def _ground_truth(raw_dir: Path):
    """The demo's ground truth (synth writes it), or None for real data."""
    path = Path(raw_dir) / "ground_truth.csv"
    return read_csv(path, "ground truth") if path.is_file() else None


def _skipped(table, columns=("file", "status", "error")) -> list[dict]:
    bad = table[table.status != "ok"]
    cols = [c for c in columns if c in bad.columns]
    return bad[cols].head(MAX_LISTED).fillna("").to_dict(orient="records")


def run_synth(params: Params, output: Path, reports: Path, progress: bool = True) -> dict:
    import torch

    from gmnr.data import synth
    torch.set_num_threads(params.synth.threads)
    cam = params.cameras["ffhq"]
    camera = synth.SynthCamera(fov_deg=cam.fov_deg, radius=cam.radius, yaw_std=cam.yaw_std,
                               pitch_std=cam.pitch_std, truncation=cam.truncation)
    with stage_run("source", params, ("synth", "cameras"), {"source": "synth"}) as run:
        summary = synth.generate(output, params.synth.count, params.synth.resolution, params.seed, camera,
                                 params.synth.roll_std, progress=progress)
        expected = {f"{i:06d}" for i in range(params.synth.count)}
        for sub in ("images", "depth"):  # a smaller count must not leave older images behind
            for f in (output / sub).glob("*"):
                if f.stem not in expected:
                    f.unlink()
        report = {"stage": "source", "source": "synth", **summary}
        write_json(report, reports / "source.json")
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        _log_sample_sheet(run, output / "images", reports / "synth_samples.png")
        run.log_artifact(output / "meta.json")
    return report


def _log_sample_sheet(run, image_dir: Path, out_path: Path, n: int = 24) -> None:
    from gmnr.data.images import contact_sheet, list_images, read_rgb, write_png_atomic
    files = list_images(image_dir)[:n]
    if files:
        write_png_atomic(out_path, contact_sheet([read_rgb(f) for f in files], ncols=6))
        run.log_artifact(out_path)


def run_download(params: Params, output: Path, reports: Path, downloads: Path, from_dir: str | None,
                 progress: bool = True) -> dict:
    from gmnr.data.download import prepare_dataset
    with stage_run("source", params, ("download",), {"source": "download"}) as run:
        summary = prepare_dataset(params.dataset, output, downloads, Path(from_dir) if from_dir else None,
                                  progress=progress, retries=params.download.retries,
                                  timeout_s=params.download.timeout_s)
        report = {"stage": "source", "source": "download", "dataset": params.dataset, **summary}
        write_json(report, reports / "source.json")
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.log_artifact(output / "manifest.json")
    return report


def run_landmarks(params: Params, image_dir: Path, output: Path, reports: Path, progress: bool = True) -> dict:
    from gmnr.preprocess import landmarks as lm
    settings = lm.DetectorSettings(params.landmarks.min_confidence, params.landmarks.min_face_size,
                                   params.landmarks.batch_size)
    with stage_run("landmarks", params, ("landmarks",)) as run:
        start = time.perf_counter()
        table = lm.run_landmarks(image_dir, settings, progress=progress)
        seconds = time.perf_counter() - start
        write_csv(table, output / "landmarks.csv", float_format="%.3f")
        if params.landmarks.export_txt:
            shutil.rmtree(output / "detections", ignore_errors=True)
            lm.export_keypoint_txt(table, output / "detections")
        summary = lm.summarize(table, seconds, _ground_truth(image_dir))
        report = {"stage": "landmarks", **summary, "skipped": _skipped(table)}
        write_json(report, reports / "landmarks.json")
        run.log_metrics(summary)
        run.log_dict({"skipped": report["skipped"]}, "skipped.json")
        run.log_artifact(lm.draw_contact_sheet(image_dir, table, reports / "landmarks_sheet.png"))
    return report


def run_pose(params: Params, image_dir: Path, landmarks_csv: Path, output: Path, reports: Path,
             progress: bool = True) -> dict:
    from gmnr.preprocess import pose
    cam = params.camera()
    camera = pose.CameraModel(cam.fov_deg, cam.radius, tuple(cam.center))
    table = read_csv(landmarks_csv, "landmarks table (gmnr landmarks)")
    with stage_run("pose", params, ("pose", "cameras")) as run:
        if params.pose.backend == "builtin":
            poses = pose.builtin_poses(table, camera, params.pose.max_reprojection_iod, params.pose.shift_sigma_iod,
                                       params.pose.keypoint_sigma_iod, progress=progress)
        else:
            poses = pose.deep3d_poses(params.pose.deep3dfacerecon_root, image_dir, table, camera, output)
        write_csv(poses, output / "poses.csv", float_format="%.8g")
        summary = pose.summarize(poses, _ground_truth(image_dir))
        report = {"stage": "pose", "backend": params.pose.backend, **summary, "skipped": _skipped(poses)}
        write_json(report, reports / "pose.json")
        run.set_tags({"pose_backend": params.pose.backend})
        run.log_metrics(summary)
        run.log_artifact(pose.pose_histogram(poses, cam.yaw_std, cam.pitch_std, cam.truncation,
                                             reports / "pose_histogram.png"))
    return report


def run_pack(params: Params, image_dir: Path, poses_csv: Path, output: Path, reports: Path,
             progress: bool = True) -> dict:
    from gmnr.preprocess.pack import pack_dataset
    cam = params.camera()
    poses = read_csv(poses_csv, "poses table (gmnr pose)")
    with stage_run("pack", params, ("pack", "cameras")) as run:
        summary = pack_dataset(image_dir, poses, output, params.training_resolution(), cam.fov_deg,
                               cam.model_dump(mode="json"), params.pack.max_abs_yaw_deg, progress=progress)
        report = {"stage": "pack", **summary}
        write_json(report, reports / "pack.json")
        run.log_metrics(summary)
        _log_sample_sheet(run, output / "images", reports / "pack_samples.png")
    return report


def run_render(params: Params, checkpoint: Path, output: Path, progress: bool = True) -> dict:
    """Videos, depth videos and a grid for a checkpoint; also attached to its training run."""
    import torch

    from gmnr.eval.video import render_outputs
    from gmnr.models.factory import load_generator
    from gmnr.train.distributed import init
    torch.set_num_threads(params.train.threads)
    device = init(params.train.device).device
    r = params.render
    G, trained, state = load_generator(checkpoint, device, r.vdr)
    if trained.model == "stylegan2":
        raise ValueError(f"{checkpoint}: a 2D StyleGAN2 (model stylegan2) has no viewpoint or depth to render "
                         f"videos of; render a gmpi, gmnr or mvcgan checkpoint")
    cam = trained.camera()
    with stage_run("render", trained, ("model",), {"checkpoint": str(checkpoint)}) as run:
        run.log_params({"render": r.model_dump()})
        files = render_outputs(G, output, r.seeds, r.frames, cam.truncation * cam.yaw_std,
                               cam.truncation * cam.pitch_std, cam.radius, cam.center, tuple(cam.depth_range),
                               None, device, r.fps)
        for f in files:
            run.log_artifact(f, "render")
        report = {"stage": "render", "checkpoint": str(checkpoint), "files": [str(f) for f in files],
                  **r.model_dump()}
        write_json(report, output / "render.json")
    if state.get("mlflow_run_id"):  # the training run shows its own videos too
        from gmnr.tracking import attach_artifacts
        attach_artifacts(state["mlflow_run_id"], files, "render")
    return report
