import socket
import warnings

import pytest

from gmnr import config, tracking


def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


def test_stage_run_logs_params_metrics_tags_and_status(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("GMNR_PIPELINE_ID", "pipe-123")
    params = config.load_params(overrides=["synth.count=7"])
    with tracking.stage_run("synth", params, sections=("synth",)) as run:
        run.log_metrics({"images": 7, "nested": {"rate": 0.5}, "label": "not a number"})
        artifact = tmp_path / "a.txt"
        artifact.write_text("hello")
        run.log_artifact(artifact)
    got = _client(uri).get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags["stage"] == "synth" and got.data.tags["dataset"] == "demo"
    assert got.data.tags["pipeline_id"] == "pipe-123"
    assert got.data.tags["params_hash"] == config.section_hash(params, "synth")
    assert got.data.params["synth.count"] == "7"
    assert got.data.metrics["images"] == 7 and got.data.metrics["nested.rate"] == 0.5
    assert "duration_s" in got.data.metrics and "label" not in got.data.metrics
    assert [a.path for a in _client(uri).list_artifacts(run.run_id)] == ["a.txt"]


def test_failed_stage_is_marked_failed_and_the_error_propagates(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ZeroDivisionError):
        with tracking.stage_run("pose", config.load_params(), sections=("pose",)) as run:
            1 / 0
    assert _client(uri).get_run(run.run_id).info.status == "FAILED"


@pytest.mark.timeout(60)
def test_unreachable_store_warns_and_the_stage_still_completes(monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    done = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.stage_run("pack", config.load_params(), sections=("pack",)) as run:
            run.log_metrics({"x": 1})
            done.append(True)
    assert done == [True] and not run.active
    assert any("unreachable" in str(w.message) for w in caught)


def test_pipeline_id_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("GMNR_PIPELINE_ID", "abc")
    assert tracking.pipeline_id() == "abc"
    monkeypatch.delenv("GMNR_PIPELINE_ID")
    assert tracking.pipeline_id().startswith(("standalone-", "snakemake-", "dvc-"))


def test_a_stage_run_logs_the_sections_dvc_yaml_lists_for_its_stage(tmp_path, monkeypatch):
    """Each stage's params are written once, in dvc.yaml: its MLflow run logs those sections (a train
    stage's less other models' sections: MVCGAN's run holds no gmpi)."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for stage, model, expected in (("pose", "gmpi", {"pose", "cameras", "images"}),
                                   ("train", "mvcgan", {"cameras", "pack", "mvcgan", "train"}),
                                   ("train", "gmnr", {"cameras", "pack", "gmpi", "gmnr", "train"}),
                                   ("evaluate", "gmnr", {"evaluate"})):
        with tracking.stage_run(stage, config.load_params(overrides=[f"model={model}"])) as run:
            pass
        logged = {k.split(".")[0] for k in _client(uri).get_run(run.run_id).data.params}
        assert logged == {"dataset", "seed", *expected}, (stage, model, logged)
