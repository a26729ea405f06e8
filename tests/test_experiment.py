"""Every experiment has its own outputs: folder names derived from what differs from params.yaml, the
same for the CLI's defaults and Snakemake's rules, and exactly dvc.yaml's paths for params.yaml's run.
The slow tests run ablations through both engines, a refused param and by-hand outputs under DVC."""
import subprocess
import sys

import pytest
import yaml

from gmnr import config, experiment
from gmnr.pipeline_spec import load_stages
from tests.conftest import ROOT, env_with_venv


def _raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _plan(overrides):
    return experiment.plan_stages(ROOT / "dvc.yaml", _raw(), overrides)


def test_without_overrides_the_plan_is_dvc_yaml_and_every_stage_is_recorded():
    planned = _plan([])
    stages = load_stages(ROOT / "dvc.yaml", config.load_params().model_dump(mode="json"))
    assert list(planned) == list(stages)
    for name, stage in stages.items():
        assert (planned[name].outs, planned[name].metrics, planned[name].cmd, planned[name].variant) == \
            (stage.outs, stage.metrics, stage.cmd, "")


def test_dvc_yaml_paths_are_the_layout_of_params_yaml_run():
    """The folder names gmnr derives for params.yaml's own run are the ones dvc.yaml writes."""
    params = config.load_params()
    stages = load_stages(ROOT / "dvc.yaml", params.model_dump(mode="json"))
    for model in params.models:
        p = params.model_copy(update={"model": model})
        layout = experiment.Layout.of(p, p)
        assert f"{layout.run_dir()}/final.pt" in stages[f"train@{model}"].outs
        assert str(layout.render_dir()) in stages[f"render@{model}"].outs
        assert str(layout.evaluation_report()) in stages[f"evaluate@{model}"].metrics
    assert str(layout.raw_dir()) in stages["source"].outs and str(layout.processed_dir()) in stages["pack"].outs


def test_a_model_override_gives_that_model_its_own_folders_and_leaves_the_others_alone():
    planned = _plan(["gmnr.vdr=false"])
    assert planned["train@gmnr"].outs == ["runs/demo/gmnr+vdr=false/final.pt", "runs/demo/gmnr+vdr=false/samples"]
    assert planned["train@gmnr"].persistent == ["runs/demo/gmnr+vdr=false/checkpoints"]
    assert "runs/demo/gmnr+vdr=false/final.pt" in planned["render@gmnr"].deps
    assert planned["evaluate@gmnr"].metrics == ["reports/demo/evaluate/gmnr+vdr=false.json"]
    assert "--output reports/demo/evaluate/gmnr+vdr=false.json" in planned["evaluate@gmnr"].cmd
    assert "reports/demo/evaluate/gmnr+vdr=false.json" in planned["compare"].deps
    assert planned["evaluate@gmnr"].command(["gmnr.vdr=false"]).endswith("-S gmnr.vdr=false")
    untouched = ("source", "landmarks", "pose", "pack", "train@gmpi", "evaluate@gmpi", "train@mvcgan", "compare")
    assert all(not planned[n].variant for n in untouched), {n: planned[n].variant for n in untouched}
    assert all(planned[f"{s}@gmnr"].variant for s in ("train", "render", "evaluate"))


def test_a_data_override_gives_the_data_and_every_model_trained_on_it_their_own_folders():
    planned = _plan(["synth.count=50"])
    assert planned["source"].outs == ["data/raw/demo+synth.count=50"]
    assert planned["landmarks"].deps[-1] == "data/raw/demo+synth.count=50"
    assert planned["landmarks"].command(["synth.count=50"]).endswith("-S synth.count=50")  # to find its input
    assert "data/processed/demo+synth.count=50" in planned["train@gmpi"].deps
    assert planned["train@gmpi"].outs[0] == "runs/demo+synth.count=50/gmpi/final.pt"
    assert all(s.variant for n, s in planned.items() if n != "compare")


def test_the_cli_writes_where_the_plan_says(tmp_path):
    """`gmnr train -S gmnr.vdr=false` by hand and Snakemake's --config run use one folder."""
    done = subprocess.run([sys.executable, "-m", "gmnr", "train", "-S", "model=gmnr", "-S", "gmnr.vdr=false",
                           "-S", f"paths.processed={tmp_path / 'none'}", "-S", f"paths.runs={tmp_path / 'runs'}"],
                          cwd=ROOT, env=env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2  # no packed set there: it fails, after choosing its folder
    assert (tmp_path / "runs" / "demo" / "gmnr+vdr=false" / ".gmnr-train.lock").is_file(), done.stderr
    data = _raw()
    params = config.resolve(data, ["model=gmnr", "gmnr.vdr=false"])
    assert str(experiment.layout_for(params, data, ["model=gmnr", "gmnr.vdr=false"]).run_dir()) == \
        "runs/demo/gmnr+vdr=false"


def test_a_named_ablation_runs_in_its_own_folder_in_both_engines():
    raw = _raw()
    raw["ablations"] = {"no-vdr": {"model": "gmnr", "gmnr": {"vdr": False}}}
    planned = experiment.plan_stages(ROOT / "dvc.yaml", raw, [])
    stage = planned["ablation-train@no-vdr"]
    assert stage.outs[0] == "runs/demo/gmnr+no-vdr/final.pt" and not stage.variant
    assert stage.rule_name == "ablation_train_no_vdr" and stage.cmd == "python -m gmnr train --ablation no-vdr"
    assert planned["ablation-evaluate@no-vdr"].metrics == ["reports/demo/evaluate/gmnr+no-vdr.json"]
    params = config.resolve(raw, [], ablation="no-vdr")
    layout = experiment.layout_for(params, raw, [], ablation="no-vdr")
    assert str(layout.run_dir()) == "runs/demo/gmnr+no-vdr" and layout.ablation_text() == "vdr=false"
    assert str(layout.evaluation_report()) == "reports/demo/evaluate/gmnr+no-vdr.json"
    # what the evaluation tags: the folder's name, and every setting that differs from params.yaml
    from gmnr.eval.evaluate import run_labels
    assert run_labels(params, config.resolve(raw), "no-vdr") == \
        {"ablation": "vdr=false", "data_variant": "default", "run": "gmnr+no-vdr"}
    # an override on top of the named ablation: a folder of its own, named after both
    more = config.resolve(raw, ["train.steps=7"], ablation="no-vdr")
    layout = experiment.layout_for(more, raw, ["train.steps=7"], ablation="no-vdr")
    assert str(layout.run_dir()) == "runs/demo/gmnr+no-vdr+train.steps=7"
    assert layout.ablation_text() == "vdr=false,train.steps=7"  # in the order of the full keys (gmnr.vdr, train.steps)
    planned = experiment.plan_stages(ROOT / "dvc.yaml", raw, ["train.steps=7"])
    assert planned["ablation-train@no-vdr"].outs[0] == "runs/demo/gmnr+no-vdr+train.steps=7/final.pt"
    assert planned["train@gmnr"].outs[0] == "runs/demo/gmnr+train.steps=7/final.pt"


def test_slugs_are_plain_or_a_hash():
    assert experiment.slug({"gmnr.vdr": False, "train.steps": 400}, "gmnr") == "vdr=false,train.steps=400"
    long = experiment.slug({"gmnr.dir_freqs": [1.0, 2.0]}, "gmnr")
    assert long.startswith("h-") and len(long) == 12
    assert experiment.slug({}) == ""


# -- through the engines, on a copy of the finished small demo (tests/conftest.py demo_project) ----------------

def _engine(args, cwd, timeout=900):
    import time
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env_with_venv(), timeout=timeout)
    return done, time.perf_counter() - start


def _snakemake_plan(root, *args) -> set[str]:
    """The rules a dry run of Snakemake would run (none: an empty set)."""
    import re
    done, _ = _engine([sys.executable, "-m", "snakemake", "--cores", "2", "-n", *args], root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = done.stdout + done.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:")[1].split("total")[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"job", "all"}


def _dvc_stale(root) -> set[str]:
    import json
    done, _ = _engine(["dvc", "status", "--json"], root)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout or "{}"))


def _digests(root, *folders, times=False) -> dict[str, str]:
    """sha256 of every file under ``folders`` (relative paths), with its modification time if ``times``."""
    import hashlib
    found = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path.relative_to(root))] = f"{digest} {path.stat().st_mtime_ns}" if times else digest
    return found


def _table_rows(root) -> list[tuple[str, str, str]]:
    lines = [ln for ln in (root / "results" / "table.md").read_text().splitlines() if ln.startswith("| ")][1:]
    return [tuple(c.strip() for c in ln.strip("|").split("|")[:3]) for ln in lines]


@pytest.fixture(scope="module")
def finished(demo_project, tmp_path_factory):
    """A copy of the finished small demo (outputs, dvc.lock, DVC cache, MLflow store, Snakemake's
    records), so these tests change nothing the other users of demo_project see."""
    import shutil
    root = tmp_path_factory.mktemp("experiments") / "project"
    shutil.copytree(demo_project, root, symlinks=True)
    assert _snakemake_plan(root) == set() and _dvc_stale(root) == set()  # the copy is as finished as the original
    return root


DEFAULT_GMNR = ("runs/demo/gmnr", "reports/demo/evaluate/gmnr.json")


@pytest.mark.slow
def test_a_bad_param_under_dvc_repro_deletes_nothing(finished):
    """`dvc repro` with a value gmnr refuses: the stage fails naming the key, and every output of
    every stage is still there, byte for byte (DVC deletes no out before running its stage)."""
    params = finished / "params.yaml"
    original = params.read_text()
    before = _digests(finished, "data", "runs", "reports", "results")
    data = yaml.safe_load(original)
    data["synth"]["count"] = "abc"  # read by the first stage: every later output is at stake
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        done, seconds = _engine(["dvc", "repro"], finished)
        assert done.returncode != 0
        assert "'synth.count': Input should be a valid integer" in done.stdout + done.stderr, done.stderr[-2000:]
        assert _digests(finished, "data", "runs", "reports", "results") == before
    finally:
        params.write_text(original)
    print(f"\nrefused dvc repro: {seconds:.1f} s, {len(before)} files untouched")


@pytest.mark.slow
def test_an_ablation_through_each_engine_leaves_the_default_model_alone(finished):
    """The issue's report: `snakemake --config 'gmnr={vdr: false}'` trained into runs/demo/gmnr/. Now
    each engine's ablation gets its own folder; the default GMNR's checkpoint, renders and report keep
    their bytes; the table has a row for each; and afterwards `dvc status` and `snakemake -n` agree that
    nothing is left to do."""
    root = finished
    default = _digests(root, *DEFAULT_GMNR)
    assert "runs/demo/gmnr/final.pt" in default

    done, seconds = _engine([sys.executable, "-m", "snakemake", "--cores", "2", "--config", "gmnr={vdr: false}"], root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"\nsnakemake --config 'gmnr={{vdr: false}}': {seconds:.1f} s")
    import torch
    ablated = torch.load(root / "runs/demo/gmnr+vdr=false/final.pt", map_location="cpu", weights_only=True)
    assert ablated["config"]["gmnr"]["vdr"] is False
    assert (root / "reports/demo/evaluate/gmnr+vdr=false.json").is_file()
    assert _digests(root, *DEFAULT_GMNR) == default
    assert {("demo", "gmnr", "default"), ("demo", "gmnr", "vdr=false")} <= set(_table_rows(root))
    assert _snakemake_plan(root) == set() and _dvc_stale(root) == set()

    done, seconds = _engine(["dvc", "exp", "run", "-S", "+ablations.no-vdr={model:gmnr,gmnr:{vdr:false}}"], root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"dvc exp run -S '+ablations.no-vdr=...': {seconds:.1f} s")
    assert "Stage 'train@gmnr' didn't change, skipping" in done.stdout, done.stdout[-3000:]
    ablated = torch.load(root / "runs/demo/gmnr+no-vdr/final.pt", map_location="cpu", weights_only=True)
    assert ablated["config"]["gmnr"]["vdr"] is False
    assert _digests(root, *DEFAULT_GMNR) == default
    assert {("demo", "gmnr", "default"), ("demo", "gmnr", "vdr=false"),
            ("demo", "gmnr", "no-vdr: vdr=false")} <= set(_table_rows(root))
    assert _snakemake_plan(root) == set() and _dvc_stale(root) == set()


@pytest.mark.slow
def test_outputs_made_by_hand_survive_dvc_exp_run(tmp_path):
    """The issue's report: in a project whose stages had been run by hand, `dvc exp run` deleted every
    file under data/. A stage run by hand into the pipeline's paths under params.yaml's values is
    recorded in dvc.lock, so DVC keeps it (byte for byte) and does not redo it."""
    from tests.conftest import copy_project, use_small_demo
    root = copy_project(tmp_path / "project")
    use_small_demo(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synth"]["count"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done, seconds = _engine([sys.executable, "-m", "gmnr", "source", "--no-progress"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recorded the outputs of stage source in dvc.lock" in done.stderr, done.stderr[-2000:]
    made = _digests(root, "data", "reports", times=True)
    assert len([p for p in made if p.startswith("data/raw/demo/images/")]) == 8
    done, exp_seconds = _engine(["dvc", "exp", "run", "source"], root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Stage 'source' didn't change, skipping" in done.stdout, done.stdout[-2000:]
    # the same files, not deleted and made again (DVC reran an unrecorded stage: new files, new times)
    assert _digests(root, "data", "reports", times=True) == made
    print(f"\nsource by hand: {seconds:.1f} s; dvc exp run: {exp_seconds:.1f} s")
