"""The MLflow UI in headless Chromium over a small store with one run per pipeline stage.

Needs Debian's ``chromium`` (``make test`` installs it): without it this test fails, it does not
skip. About 20 s (a ``mlflow server`` start-up and a few page loads)."""
import os
import shutil
import time

import pytest

from gmnr import config, tracking
from tests.mlflow_ui import INSTALL_HINT, check_mlflow_ui, find_chromium

STAGES = ("source", "landmarks", "pose", "pack", "train", "render", "evaluate", "compare")
METRIC, VALUE = "fid", 42.125


@pytest.fixture
def store(tmp_path, monkeypatch):
    """One finished run per stage, logged through gmnr.tracking like the pipeline does."""
    from mlflow.tracking import MlflowClient
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("GMNR_PIPELINE_ID", "ui-test")
    monkeypatch.delenv("GMNR_EXPERIMENT", raising=False)
    artifacts = tmp_path / "mlartifacts"
    MlflowClient(f"sqlite:///{db}").create_experiment("gmnr", artifact_location=artifacts.as_uri())
    params = config.load_params()
    for stage in STAGES:
        with tracking.stage_run(stage, params, ("paths",), {"model": "gmnr"} if stage == "evaluate" else None) as run:
            run.log_metrics({METRIC: VALUE} if stage == "evaluate" else {"items": 3})
        assert run.active, "the store could not be written"
    return db, artifacts


@pytest.mark.timeout(180)
def test_mlflow_ui_shows_every_stage_and_a_metric(store, tmp_path):
    if find_chromium() is None:
        pytest.fail(f"Chromium is required for the MLflow UI test: {INSTALL_HINT}")
    db, artifacts = store
    started = time.perf_counter()
    seen = check_mlflow_ui(db, STAGES, METRIC, tmp_path / "mlflow-ui.png", artifact_root=artifacts,
                           docs_name="mlflow-ui.png")
    seconds = time.perf_counter() - started
    print(f"\nMLflow UI check: {seconds:.1f} s (server up after {seen['server_start_s']} s)")
    assert set(seen["stages"]) == set(STAGES)
    assert seen["stages"]["evaluate"] == "evaluate:demo"
    assert seen["metric_value"] == VALUE
    for shot in seen["screenshots"]:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("GMNR_SAVE_SCREENSHOT") == "1":
        assert (config.PROJECT_ROOT / "docs" / "mlflow-ui.png").is_file()


def test_missing_chromium_is_an_error_not_a_skip(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find
    monkeypatch.delenv("GMNR_CHROMIUM", raising=False)
    assert find_chromium() is None
    with pytest.raises(RuntimeError, match="apt-get install -y chromium"):
        check_mlflow_ui(tmp_path / "none.db", STAGES, METRIC, tmp_path / "x.png")
    assert shutil.which("chromium", path=str(tmp_path)) is None
