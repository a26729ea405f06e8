"""One function per pipeline stage: read inputs, call the library, write outputs, report, track.

Every stage takes explicit input/output paths (the CLI fills them from params.yaml), writes a
JSON report (a DVC metrics file) and logs one MLflow run. Heavy imports happen inside the
functions so that ``gmnr landmarks`` never loads torch next to TensorFlow.
"""
from __future__ import annotations

import time
from pathlib import Path

from gmnr.config import Params
from gmnr.data.images import IMAGE_SUFFIXES
from gmnr.io import read_csv, write_csv, write_json
from gmnr.staging import StagedOutput
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
    # Before any work: an output holding files synth did not write (someone's photos) is refused.
    StagedOutput(output, "synth", synth.OUTPUTS, legacy=synth._legacy_claims).preflight()
    with stage_run("source", params, {"source": "synth"}) as run:
        # Staged and swapped in whole: a smaller count leaves no older image behind, and files
        # synth did not write are never deleted (gmnr.staging).
        summary = synth.generate(output, params.synth.count, params.synth.resolution, params.seed, camera,
                                 params.synth.roll_std, progress=progress)
        report = {"stage": "source", "source": "synth", **summary}
        write_json(report, reports / "source.json")
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        _log_sample_sheet(run, output / "images", reports / "synth_samples.png")
        run.log_artifact(output / "meta.json")
    return report


def _log_sample_sheet(run, image_dir: Path, out_path: Path, n: int = 24) -> None:
    """A contact sheet of the first images of a folder the stage wrote itself (so all one size)."""
    from gmnr.data.images import ImagePolicy, contact_sheet, list_images, read_rgb, write_png_atomic
    files = list_images(image_dir)[:n]
    if files:
        policy = ImagePolicy(non_square="crop")
        write_png_atomic(out_path, contact_sheet([read_rgb(f, policy) for f in files], ncols=6))
        run.log_artifact(out_path)


def run_download(params: Params, output: Path, reports: Path, downloads: Path, from_dir: str | None,
                 progress: bool = True) -> dict:
    from gmnr.data.download import prepare_dataset
    d = params.download
    entry = params.dataset
    if params.source().kind == "folder":  # the user's photos: an entry of their own name and size
        from gmnr.data.registry import custom_entry
        if not from_dir:
            raise ValueError("dataset custom reads your own photos: set download.from_dir (or pass --from) to a "
                             "folder or archive of them")
        entry = custom_entry(params.dataset_name(), params.aligned_resolution())
    with stage_run("source", params, {"source": "download"}) as run:
        summary = prepare_dataset(entry, output, downloads, Path(from_dir) if from_dir else None,
                                  progress=progress, retries=d.retries, timeout_s=d.timeout_s,
                                  max_pixels=params.images.max_pixels, max_extract_bytes=d.max_extract_bytes,
                                  max_extract_ratio=d.max_extract_ratio)
        report = {"stage": "source", "source": "download", "dataset": params.dataset_name(), **summary}
        write_json(report, reports / "source.json")
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.log_artifact(output / "manifest.json")
    return report


def _require(count: int, what: str, table, stage: str) -> None:
    """Fail fast when a stage found nothing usable: an empty set must not pass with exit 0."""
    if count:
        return
    counts = ", ".join(f"{k}: {v}" for k, v in table.status.value_counts().items()) if len(table) else "no rows"
    first = ""
    if "error" in table:
        with_error = table[table["error"].fillna("").astype(str) != ""]
        if len(with_error):
            first = f"; e.g. {with_error.iloc[0]['file']}: {with_error.iloc[0]['error']}"
    raise ValueError(f"{what} ({counts}){first}")


def _landmarks_legacy(out: Path) -> set[str] | None:
    """What a landmarks run from before output records can be shown to have written: landmarks.csv
    with this version's columns, and the keypoint files of its ok rows."""
    import pandas as pd

    from gmnr.preprocess.landmarks import COLUMNS
    table = pd.read_csv(out / "landmarks.csv")
    if not set(COLUMNS) - {"cropped", "views"} <= set(table.columns):
        return None
    ok = table[table.status == "ok"].file
    return {"landmarks.csv", *(f"detections/{Path(f).with_suffix('.txt').as_posix()}" for f in ok)}


def _photo_policy(params: Params):
    """How the landmarks and align stages read a photo: whole when the align stage crops it as FFHQ
    does (a centre square would cut the face of a portrait), else by ``images.non_square``."""
    from gmnr.data.images import ImagePolicy
    policy = ImagePolicy.from_params(params)
    return ImagePolicy(policy.max_pixels, "keep") if params.align_mode() == "ffhq" else policy


def run_landmarks(params: Params, image_dir: Path, output: Path, reports: Path, progress: bool = True) -> dict:
    from gmnr.preprocess import landmarks as lm
    settings = lm.DetectorSettings(params.landmarks.min_confidence, params.landmarks.min_face_size,
                                   params.landmarks.batch_size, params.landmarks.mirror_average)
    policy = _photo_policy(params)
    staged = StagedOutput(output, "landmarks", ["landmarks.csv", "detections"], inputs=[image_dir],
                          legacy=_landmarks_legacy)
    staged.preflight()  # before any work: overlap with the images, files landmarks did not write
    from gmnr.data.images import list_images
    if not list_images(image_dir):  # an empty or mistyped --input fails here, before the detector loads
        raise FileNotFoundError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found under "
                                f"{image_dir}: check --input")
    with stage_run("landmarks", params) as run:
        start = time.perf_counter()
        table = lm.run_landmarks(image_dir, settings, progress=progress, policy=policy)
        seconds = time.perf_counter() - start
        _require(int((table.status == "ok").sum()),
                 f"no face found in any of the {len(table)} images ({', '.join('*' + s for s in IMAGE_SUFFIXES)}) "
                 f"under {image_dir}; nothing written", table, "landmarks")
        with staged:  # landmarks.csv and detections/ are swapped in together
            write_csv(table, staged.path("landmarks.csv"), float_format="%.3f")
            renamed = 0
            if params.landmarks.export_txt:
                renamed = lm.export_keypoint_txt(table, staged.path("detections"))["renamed"]
        summary = {**lm.summarize(table, seconds, _ground_truth(image_dir)), "renamed_name_collisions": renamed}
        report = {"stage": "landmarks", **summary, "skipped": _skipped(table)}
        write_json(report, reports / "landmarks.json")
        run.log_metrics(summary)
        run.log_dict({"skipped": report["skipped"]}, "skipped.json")
        run.log_artifact(lm.draw_contact_sheet(image_dir, table, reports / "landmarks_sheet.png", policy=policy))
    return report


ALIGN_ENTRIES = ("images", "landmarks.csv", "ground_truth.csv")


def run_align(params: Params, image_dir: Path, landmarks_csv: Path, output: Path, reports: Path,
              progress: bool = True) -> dict:
    """FFHQ's crop of every face (``align.mode`` ffhq) or the images passed through (off) into
    ``output``: ``images/`` and ``landmarks.csv`` (the landmarks carried through the crop), which
    pose and pack read whatever the mode. The demo's ground truth travels with images that are not
    cropped (a crop changes the roll it states)."""
    from gmnr.preprocess import align
    mode = params.align_mode()
    staged = StagedOutput(output, "align", ALIGN_ENTRIES, inputs=[image_dir, landmarks_csv])
    staged.preflight()
    table = read_csv(landmarks_csv, "landmarks table (gmnr landmarks)")
    _require(int((table.status == "ok").sum()),
             f"{landmarks_csv} has no face to align (the landmarks stage found none in the images "
             f"({', '.join('*' + s for s in IMAGE_SUFFIXES)}) under {image_dir}); nothing written", table, "align")
    settings = align.AlignSettings(params.aligned_resolution(), params.align.min_eye_to_mouth_px,
                                   params.align.max_outside_fraction)
    with stage_run("align", params, {"align_mode": mode}) as run:
        start = time.perf_counter()
        with staged:
            images = staged.path("images")
            images.mkdir(parents=True)
            if mode == "ffhq":
                aligned = align.align_table(table, image_dir, images, settings, _photo_policy(params), progress)
            else:
                aligned = align.pass_through(table, image_dir, images)
                truth = Path(image_dir) / "ground_truth.csv"
                if truth.is_file():
                    import shutil
                    shutil.copy2(truth, staged.path("ground_truth.csv"))
            _require(int((aligned.status == "ok").sum()),
                     f"no face of {landmarks_csv} could be aligned ({len(aligned)} rows; images under {image_dir}); "
                     f"nothing written", aligned, "align")
            write_csv(aligned, staged.path("landmarks.csv"), float_format="%.3f")
        summary = {**align.summarize(aligned, mode, time.perf_counter() - start),
                   "resolution": settings.resolution if mode == "ffhq" else None}
        report = {"stage": "align", **summary, "skipped": _skipped(aligned)}
        write_json(report, reports / "align.json")
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.log_dict({"skipped": report["skipped"]}, "skipped.json")
        if mode == "ffhq":
            run.log_artifact(_aligned_sheet(output, aligned, reports / "align_sheet.png"))
    return report


def _aligned_sheet(output: Path, table, out_path: Path) -> Path:
    """Aligned crops with their carried landmarks drawn (they must sit on the eyes, nose and mouth)."""
    from gmnr.preprocess.landmarks import draw_contact_sheet
    return draw_contact_sheet(output, table[table.status == "ok"], out_path)


def _pose_legacy(out: Path) -> set[str] | None:
    """A poses.csv from before output records: recognised by this version's columns."""
    from gmnr.preprocess.pose import POSE_COLUMNS
    header = (out / "poses.csv").read_text().split("\n", 1)[0].split(",")
    return {"poses.csv"} if header == POSE_COLUMNS else None


def run_pose(params: Params, image_dir: Path, landmarks_csv: Path, output: Path, reports: Path,
             progress: bool = True) -> dict:
    from gmnr.data.images import ImagePolicy
    from gmnr.preprocess import pose
    cam = params.camera()
    camera = pose.CameraModel(cam.fov_deg, cam.radius, tuple(cam.center))
    staged = StagedOutput(output, "pose", ["poses.csv"], inputs=[image_dir, landmarks_csv], legacy=_pose_legacy)
    staged.preflight()
    table = read_csv(landmarks_csv, "landmarks table (gmnr landmarks)")
    _require(int((table.status == "ok").sum()), f"{landmarks_csv} has no face to estimate a pose from", table, "pose")
    with stage_run("pose", params) as run:
        with staged:
            if params.pose.backend == "builtin":
                shift_sigma_iod, cal = params.pose_fit()
                poses = pose.builtin_poses(table, camera, params.pose.max_reprojection_iod,
                                           shift_sigma_iod, params.pose.keypoint_sigma_iod,
                                           progress=progress,
                                           calibration={a: pose.AngleCalibration(**getattr(cal, a).model_dump())
                                                        for a in ("yaw", "pitch")})
            else:  # Deep3DFaceRecon's inputs go to scratch space inside the staging folder
                poses = pose.deep3d_poses(params.pose.deep3dfacerecon_root, image_dir, table, camera,
                                          staged.work_dir, policy=ImagePolicy.from_params(params))
            _require(int((poses.status == "ok").sum()),
                     f"no pose could be estimated from {landmarks_csv} ({len(poses)} rows)", poses, "pose")
            write_csv(poses, staged.path("poses.csv"), float_format="%.8g")
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
    from gmnr.data.images import ImagePolicy
    from gmnr.preprocess.pack import _legacy_claims, pack_dataset
    cam = params.camera()
    # Before any work: an output overlapping the raw images or poses.csv, or holding files pack did
    # not write, is refused (pack_dataset checks again when it swaps its outputs in).
    StagedOutput(output, "pack", ["images", "dataset.json"], inputs=[image_dir, poses_csv],
                 legacy=_legacy_claims).preflight()
    poses = read_csv(poses_csv, "poses table (gmnr pose)")
    with stage_run("pack", params) as run:
        summary = pack_dataset(image_dir, poses, output, params.training_resolution(), cam.fov_deg,
                               cam.model_dump(mode="json"), params.pack.max_abs_yaw_deg, progress=progress,
                               policy=ImagePolicy.from_params(params), inputs=(poses_csv,))
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
    from gmnr.models.registry import get
    if not get(trained.model).has_viewpoint:
        raise ValueError(f"{checkpoint}: a '{trained.model}' model ({get(trained.model).summary}) has no viewpoint "
                         f"or depth to render videos of; render a gmpi, gmnr or mvcgan checkpoint")
    cam = trained.model_camera()  # the generator's own camera (MVCGAN's differs from the dataset's)
    with stage_run("render", trained, {"checkpoint": str(checkpoint)}) as run:
        run.log_params({"render": r.model_dump()})
        files = render_outputs(G, output, r.seeds, r.frames, cam.sweep_stds() * cam.yaw_std,
                               cam.sweep_stds() * cam.pitch_std, cam.radius, cam.center, tuple(cam.depth_range),
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


def _render_legacy(out: Path) -> set[str] | None:
    """A render folder from before output records: the files its render.json lists, and itself."""
    import json
    claims = set()
    for folder in out.iterdir():
        report = folder / "render.json"
        if folder.is_dir() and report.is_file():
            files = json.loads(report.read_text()).get("files", [])
            claims |= {f"{folder.name}/render.json", *(f"{folder.name}/{Path(f).name}" for f in files)}
    return claims or None


def run_render_staged(params: Params, checkpoint: Path, output: Path, progress: bool = True) -> dict:
    """:func:`run_render` into a staging folder, swapped in whole as ``output``: a killed render
    leaves the previous videos complete, and a folder of someone else's files is never replaced."""
    output = Path(output)
    staged = StagedOutput(output.parent, "render", [output.name], inputs=[checkpoint], legacy=_render_legacy)
    staged.preflight()
    with staged:
        inner = staged.path(output.name)
        report = run_render(params, checkpoint, inner, progress)
        report["files"] = [str(output / Path(f).relative_to(inner)) for f in report["files"]]
        write_json(report, inner / "render.json")  # the paths it will have once swapped in
    return report
