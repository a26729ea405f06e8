"""`gmnr evaluate` end to end on a tiny trained GMPI checkpoint: metrics.json and the MLflow run."""
import json
import math
import subprocess
import sys

import pytest
import torch

from gmnr.config import load_params
from gmnr.eval.evaluate import run_labels
from tests.conftest import ROOT, env_with_venv, make_disc_dataset

TINY = ["-S", "pack.resolution=16", "-S", "gmpi.pretrained=null",
        "-S", "gmpi.z_dim=16", "-S", "gmpi.w_dim=16", "-S", "gmpi.mapping_layers=2",
        "-S", "gmpi.channel_base=256", "-S", "gmpi.channel_max=32", "-S", "gmpi.planes_train=4",
        "-S", "gmpi.planes_eval=4", "-S", "train.grid_latents=2", "-S", "train.grid_views=2",
        "-S", "train.threads=2", "-S", "train.views_per_latent=2", "-S", "train.r1_interval=2"]
EVAL = ["-S", "evaluate.fid_images=12", "-S", "evaluate.identity_pairs=2", "-S", "evaluate.geometry_images=2",
        "-S", "evaluate.speed_frames=2", "-S", "evaluate.speed_warmup=1", "-S", "evaluate.kid_subsets=10"]
METRIC_KEYS = ("fid", "kid", "identity_similarity", "depth_mse", "pose_mse", "fps")


def test_ablation_labels_hold_every_setting_that_differs_from_params_yaml():
    reference = load_params()
    assert run_labels(load_params(overrides=["model=gmpi", "gmnr.vdr=false"]), reference)["ablation"] == "default"
    assert run_labels(load_params(overrides=["model=gmnr"]), reference)["ablation"] == "default"
    params = load_params(overrides=["model=gmnr", "gmnr.vdr=false", "gmnr.vdr_fraction=0.3",
                                    "gmnr.consistency_weight=0", "train.steps=400", "evaluate.fid_images=1000"])
    labels = run_labels(params, reference)
    # every difference (ordered by full key; the model's own section without its prefix), not only GMNR's switches
    assert labels["ablation"] == "evaluate.fid_images=1000,consistency_weight=0,vdr=false,vdr_fraction=0.3," \
                                 "train.steps=400"
    # the run folder: what training read (the evaluation's own setting names its report, not the folder)
    assert labels["run"] == "gmnr+consistency_weight=0,vdr=false,vdr_fraction=0.3,train.steps=400"
    assert labels["data_variant"] == "default"
    assert run_labels(load_params(overrides=["model=gmnr", "evaluate.vdr=sampled"]), reference)["ablation"] == \
        "evaluate.vdr=sampled"
    # a value equal to params.yaml's (the demo's 100 steps) is no difference; execution settings never are
    assert run_labels(load_params(overrides=["model=gmpi", "train.steps=100", "train.threads=1"]), reference) == \
        {"ablation": "default", "data_variant": "default", "run": "gmpi"}
    data = run_labels(load_params(overrides=["model=gmpi", "synth.count=50"]), reference)
    assert (data["ablation"], data["data_variant"]) == ("default", "synth.count=50")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A packed set of 12 coloured discs (16 px) and a GMPI run of 2 steps on it."""
    root = tmp_path_factory.mktemp("evaluate")
    make_disc_dataset(root, 12)
    env = env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    done = subprocess.run([sys.executable, "-m", "gmnr", "train", "--no-progress", "--input", str(root / "packed"),
                           "--output", str(root / "run"), *TINY, "-S", "train.steps=2", "-S", "train.checkpoint_every=2",
                           "-S", "train.sample_every=2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return root, env


def _evaluate(root, env, *extra):
    return subprocess.run([sys.executable, "-m", "gmnr", "evaluate", "--no-progress", "--checkpoint",
                           str(root / "run" / "final.pt"), "--input", str(root / "packed"), *TINY, *EVAL,
                           "-S", f"paths.runs={root / 'runs'}", "-S", f"paths.reports={root / 'reports'}", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_evaluate_writes_metrics_json_and_an_mlflow_run_with_its_tags(trained):
    from mlflow.tracking import MlflowClient
    root, env = trained
    done = _evaluate(root, env, "--output", str(root / "final_metrics.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((root / "final_metrics.json").read_text())
    metrics, backends, tags = report["metrics"], report["backends"], report["tags"]
    for key in METRIC_KEYS:
        assert key in metrics and key in backends
    assert metrics["fid"] > 0 and math.isfinite(metrics["fid"]) and math.isfinite(metrics["kid"])
    assert metrics["n_generated"] == 12 and metrics["n_real"] == 12
    assert metrics["fps"] > 0 and metrics["speed_planes"] == 4 and metrics["speed_resolution"] == 16
    assert 0.0 <= metrics["face_detection_rate"] <= 1.0  # 16 px noise: usually 0, never a crash
    if metrics["pose_n_detected"] == 0:
        assert metrics["pose_mse"] is None  # NaN in MLflow, null in JSON
    assert "InceptionV3" in backends["fid"] and backends["kid"] == backends["fid"]
    assert backends["identity_similarity"].startswith(("dlib", "ArcFace"))
    state = torch.load(root / "run" / "final.pt", map_location="cpu", weights_only=True)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.stage = 'evaluate'")
    # The TINY settings differ from params.yaml: this evaluation is an ablation, labelled with every one of
    # them, and measures no baselines (those are measured once, with the run params.yaml defines).
    assert [r.data.tags["ablation"] for r in runs] == [tags["ablation"]]
    assert "channel_base=256" in tags["ablation"] and "z_dim=16" in tags["ablation"]
    assert not (root / "final_metrics-init.json").exists()
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_id == report["mlflow_run_id"]
    t = run.data.tags
    assert state["mlflow_run_id"] and t["train_run_id"] == state["mlflow_run_id"]
    assert client.get_run(t["train_run_id"]).data.tags["stage"] == "train"
    assert (t["dataset"], t["model"], t["checkpoint_step"]) == ("demo", "gmpi", "2")
    assert t["data_variant"] == "pack.resolution=16" and t["run"].startswith("gmpi+")
    assert f"runs/{t['train_run_id']}" in t["mlflow.note.content"]  # the description links the training run
    for key in METRIC_KEYS:
        assert t[f"backend.{key}"] == backends[key]
    assert all(t[k] == v for k, v in tags.items())  # metrics.json's tags are the run's tags
    assert run.data.metrics["fid"] == pytest.approx(metrics["fid"])
    assert run.data.metrics["n_generated"] == 12 and "face_detection_rate" in run.data.metrics
    # the second model's evaluation reuses the training set's Inception features
    assert list((root / "runs" / "demo" / ".cache").glob("fid_real_*.npy"))

    init = _evaluate(root, env, "--init")
    assert init.returncode == 0, init.stderr[-3000:]
    # by default beside the pipeline's reports, in the folders of this run (TINY differs from params.yaml)
    [init_path] = (root / "reports").glob("demo+*/evaluate/gmpi+*-init.json")
    init_report = json.loads(init_path.read_text())
    assert init_report["tags"]["ablation"] == f"{tags['ablation']},init" and init_report["tags"]["checkpoint"] == "init"
    assert init_report["metrics"]["fid_real_features_cached"] is True
    assert math.isfinite(init_report["metrics"]["fid"]) and init_report["metrics"]["fid"] != metrics["fid"]


def test_evaluate_without_a_checkpoint_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gmnr", "evaluate", "--checkpoint", str(tmp_path / "none.pt")],
                          cwd=ROOT, env=env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("gmnr evaluate: error:")
    assert "none.pt" in done.stderr
