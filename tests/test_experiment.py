"""Every experiment has its own outputs: folder names derived from what differs from params.yaml, the
same for the CLI's defaults and Snakemake's rules, and exactly dvc.yaml's paths for params.yaml's run."""
import subprocess
import sys

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
