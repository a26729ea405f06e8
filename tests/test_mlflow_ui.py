"""The MLflow UI in headless Chromium over a small store like the pipeline's: one pipeline run with
the stage runs nested under it, GMNR evaluated with and without alpha-VdR, a rendered video.

Needs Debian's ``chromium`` (``make test`` installs it): without it this test fails, it does not
skip. About 40 s (a ``mlflow server`` start-up and a few page loads). The screenshots stay in
``test-artifacts/mlflow-ui/`` (CI keeps that folder)."""
import os
import shutil
import time

import numpy as np
import pytest

from gmnr import config, tracking
from tests.mlflow_ui import INSTALL_HINT, artifacts_dir, check_mlflow_ui, find_chromium

DATA_STAGES = ("source", "landmarks", "align", "pose", "pack")
STAGES = (*DATA_STAGES, "train", "render", "evaluate", "compare")
METRIC = "fid"
FIDS = {("gmpi", "default"): 42.125, ("gmnr", "default"): 40.5, ("gmnr", "vdr=false"): 41.75}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A pipeline invocation logged through gmnr.tracking as the pipeline logs it: its parent run,
    the data stages, train / render / evaluate of GMPI, GMNR and GMNR without alpha-VdR, compare."""
    from gmnr.eval.video import write_video
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("GMNR_PIPELINE_ID", "snakemake-uitest")
    monkeypatch.delenv("GMNR_EXPERIMENT", raising=False)
    artifacts = tmp_path / "mlartifacts"
    from mlflow.tracking import MlflowClient
    MlflowClient(f"sqlite:///{db}").create_experiment("gmnr", artifact_location=artifacts.as_uri())
    parent = tracking.start_pipeline_run("snakemake-uitest")
    assert parent, "the store could not be written"
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    params = config.load_params()
    for stage in DATA_STAGES:
        with tracking.stage_run(stage, params, sections=("paths",)) as run:
            run.log_metrics({"images": 3})
    # a video that moves and is not black: a bright bar sweeping across a grey background
    frames = np.full((12, 64, 64, 3), 90, np.uint8)
    for i, frame in enumerate(frames):
        frame[:, 4 * i:4 * i + 8] = (240, 200, 60)
    video = write_video(np.repeat(np.repeat(frames, 4, axis=1), 4, axis=2), tmp_path / "sweep", 12)[0]
    render_run = None
    for (model, ablation), fid in FIDS.items():
        tracking.set_run_context({"ablation": ablation, "data_variant": "default", "run": model})
        p = params.model_copy(update={"model": model})
        with tracking.stage_run("train", p, sections=("train",)) as train:
            train.log_metrics({"loss_G": 1.25, "loss_D": 0.75})
        with tracking.stage_run("render", p, sections=("render",)) as render:
            render.log_artifact(video, "render")
        render_run = render_run or render.run_id
        tags = {"ablation": ablation, "train_run_id": train.run_id}
        with tracking.stage_run("evaluate", p, tags, sections=("evaluate",)) as run:
            run.set_description(f"Evaluation trained by [the training run]({run.run_link(train.run_id)})")
            run.log_metrics({METRIC: fid, "kid": fid / 1000, "fps": 50.0})
    tracking.set_run_context({})
    with tracking.stage_run("compare", params, {"model": "gmpi,gmnr"}, sections=("paths",)) as run:
        run.log_metrics({"rows": 3})
    tracking.end_pipeline_run(parent)
    return db, artifacts, f"{render_run}/render/sweep.mp4"


@pytest.mark.timeout(300)
def test_mlflow_ui_shows_the_runs_by_model_and_ablation_the_fid_column_and_a_playing_video(store):
    if find_chromium() is None:
        pytest.fail(f"Chromium is required for the MLflow UI test: {INSTALL_HINT}")
    db, artifacts, video = store
    shots = artifacts_dir("mlflow-ui")
    started = time.perf_counter()
    seen = check_mlflow_ui(db, STAGES, METRIC, shots, artifact_root=artifacts, video=video,
                           expect_names=("evaluate demo/gmnr vdr=false", "evaluate demo/gmnr", "train demo/gmpi",
                                         "train demo/gmnr vdr=false", "source demo"),
                           docs_name="mlflow-ui.png")
    print(f"\nMLflow UI check: {time.perf_counter() - started:.1f} s (server up after {seen['server_start_s']} s); "
          f"screenshots in {shots}; video {seen['video']}")
    assert seen["unfolded"] == 1  # one pipeline invocation, its stage runs under it
    assert seen["stages"]["evaluate"].startswith("evaluate demo/")
    assert seen["stages"]["pose"] == "pose demo"  # a data stage: no model in its name
    assert seen["metric_value"] == FIDS[("gmnr", "vdr=false")]  # the newest evaluation, in the FID column too
    for name in ("runs", "train-run", "evaluate-run", "evaluate-metric", "video"):
        shot = seen["screenshots"][name]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000, name
    if os.environ.get("GMNR_SAVE_SCREENSHOT") == "1":
        assert (config.PROJECT_ROOT / "docs" / "mlflow-ui.png").is_file()


def test_runs_are_named_for_what_they_are_and_tagged_only_where_it_applies(store):
    from mlflow.tracking import MlflowClient
    db, _, _ = store
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("gmnr")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = experiment.tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"]
    assert "metrics.`fid`" in view and "tags.`ablation`" in view
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    parent = next(r for r in runs if r.data.tags["stage"] == "pipeline")
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("pipeline snakemake ")
    for r in runs:
        if r is not parent:
            assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id, r.info.run_name
    assert {"source demo", "pose demo", "train demo/gmpi", "train demo/gmnr vdr=false",
            "evaluate demo/gmnr vdr=false", "evaluate demo/gmnr", "compare"} <= set(by_name)
    assert "model" not in by_name["pose demo"].data.tags  # a data stage has no model
    assert by_name["evaluate demo/gmnr vdr=false"].data.tags["model"] == "gmnr"


def test_missing_chromium_is_an_error_not_a_skip(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find
    monkeypatch.delenv("GMNR_CHROMIUM", raising=False)
    assert find_chromium() is None
    with pytest.raises(RuntimeError, match="apt-get install -y chromium"):
        check_mlflow_ui(tmp_path / "none.db", STAGES, METRIC, tmp_path / "shots")
    assert shutil.which("chromium", path=str(tmp_path)) is None
