"""The whole data chain through both engines, on a small demo set, in a copy of the project.

Slow (about two minutes): marked `slow`, and still part of `make test` / CI."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import imageio.v3 as iio
import pytest
import yaml

from tests.conftest import env_with_venv

pytestmark = pytest.mark.slow
DATA_STAGES = ("source", "landmarks", "align", "pose", "pack")
MODEL_STAGES = ("train", "render", "evaluate")  # one per model: train@gmpi, train@gmnr, ...
STAGE_TAGS = (*DATA_STAGES, *MODEL_STAGES, "compare")  # the `stage` tag of MLflow runs


def _models(root) -> list[str]:
    return yaml.safe_load((root / "params.yaml").read_text())["models"]


def _dvc_stages(root) -> list[str]:
    """DVC's stage names: data stages, one per (stage, model), and compare."""
    return [*DATA_STAGES, *(f"{s}@{m}" for s in MODEL_STAGES for m in _models(root)), "compare"]


def _run(args, cwd, timeout=900):
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env_with_venv(), timeout=timeout)
    return done, time.perf_counter() - start


def _snakemake(*args, cwd):
    return _run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd)


def _dvc(*args, cwd):
    return _run(["dvc", *args], cwd)


def _jobs_planned(dry_run_output: str) -> set[str]:
    """Rule names in Snakemake's 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"job"}


@pytest.fixture(scope="module")
def project(demo_project):
    """The small demo after its first `snakemake --cores 2` (tests/conftest.py, shared with other tests)."""
    return demo_project


def test_first_run_produces_every_output_with_good_detection_and_pose(project):
    reports = {s: json.loads((project / "reports" / "demo" / f"{s}.json").read_text()) for s in DATA_STAGES}
    assert reports["source"]["count"] == 40
    assert reports["landmarks"]["images_total"] == 40
    assert reports["landmarks"]["detection_rate_yaw30"] >= 0.9, reports["landmarks"]
    assert reports["pose"]["yaw_abs_err_deg_median_yaw30"] <= 3.0, reports["pose"]
    assert reports["pose"]["pitch_abs_err_deg_median_yaw30"] <= 3.0, reports["pose"]
    # The line estimated = slope * true + offset against the demo's true poses (MTCNN's response
    # undone by pose.calibration). On these 40 images a slope's sampling error is about 0.07, so
    # the bound is looser than the acceptance bound 0.95-1.05 (measured on the 200-image demo by
    # benchmarks/pose_calibration.py; test_pose holds the calibration mechanism to it); measured
    # here: yaw 1.02, pitch 0.88 calibrated, pitch 0.65 uncalibrated.
    for angle in ("yaw", "pitch"):
        assert abs(reports["pose"][f"{angle}_fit_slope"] - 1.0) <= 0.2, reports["pose"]
        assert abs(reports["pose"][f"{angle}_fit_offset_deg"]) <= 1.0, reports["pose"]
    labels = json.loads((project / "data" / "processed" / "demo" / "dataset.json").read_text())
    assert len(labels["labels"]) == reports["pack"]["images_packed"] == reports["pose"]["poses_ok"]
    assert len(list((project / "data" / "processed" / "demo" / "images").glob("*.png"))) == len(labels["labels"])
    assert (project / "data" / "interim" / "demo" / "detections").is_dir()
    models = _models(project)
    for model in models:
        train = json.loads((project / "runs" / "demo" / model / "train.json").read_text())
        assert train["step"] == 4 and (project / "runs" / "demo" / model / "final.pt").is_file()
        render = project / "runs" / "demo" / model / "render"
        assert {p.name for p in render.iterdir()} >= {"sweep.mp4", "sweep_depth.gif", "circle.mp4", "grid.png"}
        # previews large enough to see: the 64 px renders upscaled to 256 px tiles; the depth key beside
        # the depth frames (wider than tall)
        sweep, depth = (iio.imread(render / f"{n}.gif") for n in ("sweep", "sweep_depth"))
        side = sweep.shape[1]
        assert side >= 256 and sweep.shape[2] == side, sweep.shape
        assert depth.shape[1] == side and depth.shape[2] > side + 32, depth.shape
        assert iio.imread(render / "grid.png").shape[0] == 2 * side  # render.seeds: 2 rows
        assert min(iio.imread(project / "runs" / "demo" / model / "samples" / "final.png").shape[:2]) >= 2 * 256
        evaluation = json.loads((project / "reports" / "demo" / "evaluate" / f"{model}.json").read_text())
        assert evaluation["metrics"]["fid"] > 0 and evaluation["metrics"]["fps"] > 0, evaluation
    table = (project / "results" / "table.md").read_text()
    assert all(f"| {m} " in table for m in models), table
    assert (project / "results" / "fid_vs_fps.png").stat().st_size > 0


def test_snakemake_report_holds_the_table_and_the_pictures(project):
    done, _ = _snakemake("--report", "report.html", cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (project / "report.html").read_text(errors="replace")
    assert "fid_vs_fps.png" in html and "table.csv" in html and "Training samples" in html
    assert "table.md" in html  # the table as people read it, with its run links and notes


def test_second_snakemake_and_dvc_are_noops(project):
    done, seconds = _snakemake(cwd=project)
    assert done.returncode == 0 and "Nothing to be done" in done.stdout + done.stderr
    print(f"\nno-op snakemake: {seconds:.1f} s")
    done, seconds = _dvc("repro", cwd=project)
    assert done.returncode == 0, done.stderr
    assert all(f"Stage '{s}' didn't change, skipping" in done.stdout for s in _dvc_stages(project)), done.stdout
    print(f"no-op dvc repro after snakemake: {seconds:.1f} s")


def test_a_late_param_reruns_only_the_late_stage_in_both_engines(project):
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["demo"]["pack"]["resolution"] = 32  # the value in effect for the demo
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        done, _ = _snakemake("-n", cwd=project)
        models = _models(project)
        later = {f"{s}_{m}" for s in MODEL_STAGES for m in models}
        assert _jobs_planned(done.stdout) == {"pack", *later, "compare", "all"}, done.stdout[-2000:]
        done, _ = _dvc("status", "--json", cwd=project)
        # the rest follows once pack and training rerun
        assert set(json.loads(done.stdout)) == {"pack", *(f"train@{m}" for m in models)}, done.stdout
    finally:
        params_file.write_text(original)
    done, _ = _snakemake("-n", cwd=project)
    assert "Nothing to be done" in done.stdout + done.stderr


def test_a_gmpi_knob_retrains_gmpi_and_gmnr_and_leaves_mvcgan_alone_in_both_engines(project):
    """Snakemake tracks each model's spec sections (gmnr/models/specs): MVCGAN's jobs are not planned.
    DVC lists `gmpi` for every item of its train foreach, so it reruns train@mvcgan, which finds its run
    finished under the params MVCGAN reads and leaves final.pt as it was: render and evaluate stay done."""
    params_file, lock = project / "params.yaml", project / "dvc.lock"
    original, original_lock = params_file.read_text(), lock.read_bytes()
    params = yaml.safe_load(original)
    params["gmpi"]["planes_eval"] = 48  # read by GMPI and GMNR (their spec sections), not by MVCGAN
    models = _models(project)
    readers = [m for m in models if m in ("gmpi", "gmnr")]
    final = project / "runs" / "demo" / "mvcgan" / "final.pt"
    before, before_ns = final.read_bytes(), final.stat().st_mtime_ns
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        done, _ = _snakemake("-n", cwd=project)
        assert _jobs_planned(done.stdout) == {*(f"{s}_{m}" for s in MODEL_STAGES for m in readers), "compare",
                                              "all"}, done.stdout[-2000:]
        done, _ = _dvc("status", "--json", cwd=project)
        assert set(json.loads(done.stdout)) == {f"train@{m}" for m in models}, done.stdout
        done, seconds = _dvc("repro", "--single-item", "train@mvcgan", cwd=project)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "nothing to do" in done.stdout + done.stderr
        assert final.read_bytes() == before  # (DVC relinks it from its cache, so its time may change)
        done, _ = _dvc("status", "--json", cwd=project)
        assert not [s for s in json.loads(done.stdout) if s.endswith("@mvcgan")], done.stdout
        print(f"\ndvc repro train@mvcgan after a GMPI knob: {seconds:.1f} s, final.pt untouched")
    finally:
        params_file.write_text(original)
        lock.write_bytes(original_lock)
        # The rerun renews final.pt's time (and DVC relinks it from its cache): the same bytes with a new
        # time, which a later Snakemake run would read as a new checkpoint (README, "Two engines"); put it back
        os.utime(final, ns=(before_ns, before_ns))
    done, _ = _snakemake("-n", cwd=project)
    assert "Nothing to be done" in done.stdout + done.stderr


def test_dvc_repro_runs_the_chain_and_then_both_engines_are_noops(project):
    done, seconds = _dvc("repro", "--force", cwd=project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"\ndvc repro --force: {seconds:.1f} s")
    done, seconds = _dvc("repro", cwd=project)
    assert all(f"Stage '{s}' didn't change, skipping" in done.stdout for s in _dvc_stages(project)), done.stdout
    print(f"no-op dvc repro: {seconds:.1f} s")
    done, seconds = _snakemake(cwd=project)
    assert "Nothing to be done" in done.stdout + done.stderr, done.stdout[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_lists_one_run_per_stage_with_params_and_metrics(project):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}"],
                              cwd=project, env=env_with_venv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        experiment = json.load(urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=gmnr"))
        body = json.dumps({"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100}).encode()
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        runs = json.load(urllib.request.urlopen(request))["runs"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    by_stage: dict[str, list] = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        by_stage.setdefault(tags.get("stage"), []).append((run, tags))
    # one parent run per pipeline invocation, the stage runs of that invocation nested under it
    parents = {tags["pipeline_id"]: run["info"]["run_id"] for run, tags in by_stage.pop("pipeline", [])}
    stage_runs = [(run, tags) for entries in by_stage.values() for run, tags in entries]
    assert {tags["pipeline_id"] for _, tags in stage_runs} <= set(parents), (sorted(parents), stage_runs[:1])
    for run, tags in stage_runs:
        assert tags.get("mlflow.parentRunId") == parents[tags["pipeline_id"]], (run["info"]["run_name"], tags)
    assert set(by_stage) == set(STAGE_TAGS)
    models = _models(project)
    for stage in STAGE_TAGS:
        entries = by_stage[stage]
        per_model = stage in MODEL_STAGES
        assert sorted({tags.get("model") for _, tags in entries}) == sorted(models) or not per_model
        # One snakemake run and one forced dvc repro: two runs per stage (and model), each
        # pipeline id once; except training, which the forced rerun resumes from its final
        # checkpoint, in its own run.
        expected = (1, {"snakemake"}) if stage == "train" else (2, {"snakemake", "dvc"})
        groups = [[e for e in entries if e[1].get("model") == m] for m in models] if per_model else [entries]
        for group in groups:
            engines = {tags["pipeline_id"].split("-")[0] for _, tags in group}
            assert (len(group), engines) == expected, (stage, [t for _, t in group])
        for run, tags in entries:
            assert run["info"]["status"] == "FINISHED"
            assert run["data"].get("params") and run["data"].get("metrics")
            assert tags["dataset"] == "demo" and tags["git_commit"] != "unknown"
            # named for what it is (`train demo/gmpi`, `pose demo`); a model only where there is one
            name = run["info"]["run_name"]
            if per_model:
                assert name == f"{stage} demo/{tags['model']}", name
            elif stage == "compare":
                assert name == "compare" and tags["model"] == ",".join(sorted(models))  # the models it compares
            else:
                assert "model" not in tags and name == f"{stage} demo", (name, tags.get("model"))


def test_mlflow_ui_shows_the_demo_runs_in_a_browser(project):
    """The store the demo wrote, as a person browses it (screenshots in test-artifacts/mlflow-ui-demo/)."""
    from tests.mlflow_ui import artifacts_dir, check_mlflow_ui
    models = _models(project)
    seen = check_mlflow_ui(project / "mlflow.db", STAGE_TAGS, "fid", artifacts_dir("mlflow-ui-demo"),
                           artifact_root=project / "mlartifacts", docs_name="mlflow-ui.png",
                           expect_names=[f"evaluate demo/{m}" for m in models] + ["train demo/gmpi", "pose demo"])
    assert seen["unfolded"] >= 1
