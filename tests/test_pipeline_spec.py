"""dvc.yaml is the one description of the pipeline: DVC's own reading of it and the
Snakemake rules generated from it must agree on commands, deps, params and outs."""
import subprocess
import sys

import pytest
import yaml

from gmnr.pipeline_spec import folder_readers, load_stages, snakemake_inputs
from tests.conftest import ROOT, env_with_venv


def _config():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_dvc_and_our_reading_of_dvc_yaml_agree():
    from dvc.repo import Repo
    ours = load_stages(ROOT / "dvc.yaml", _config())
    with Repo(str(ROOT)) as repo:
        theirs = {s.name: s for s in repo.index.stages if s.name}
    assert set(theirs) == set(ours)
    for name, stage in theirs.items():
        mine = ours[name]
        assert stage.cmd == mine.cmd
        dvc_deps = sorted(d.def_path for d in stage.deps if d.def_path and not d.def_path.endswith(".yaml"))
        assert dvc_deps == sorted(mine.deps)
        assert sorted(o.def_path for o in stage.outs) == sorted(mine.outs + mine.metrics + mine.persistent)
        dvc_params = set(k for d in stage.deps if hasattr(d, "params") and d.params for k in d.params)
        if mine.trains:  # DVC lists GMPI's backbone for every model; we track what the model's spec reads
            from gmnr.models.registry import section_of, train_params
            assert set(mine.params) <= dvc_params
            assert {section_of(k) for k in dvc_params - set(mine.params)} <= {"gmpi"}, name
            assert set(train_params(mine.trains)) <= set(mine.params), name
        else:
            assert dvc_params == set(mine.params)


def test_snakemake_rules_are_the_dvc_stages_with_a_switched_dataset():
    """--config dataset=... changes every path in the rules, as `dvc exp run -S dataset=...` does."""
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--forceall", "-p",
                           "--config", "dataset=ffhq256"], cwd=ROOT, capture_output=True, text=True,
                          env=env_with_venv(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = load_stages(ROOT / "dvc.yaml", {**_config(), "dataset": "ffhq256"})
    for name, stage in stages.items():
        assert f"rule {stage.rule_name}:" in done.stdout
        for out in stage.outs:
            assert out in done.stdout
            # compare's table spans every dataset in the tracking store; everything else is per dataset
            assert "ffhq256" in out or stage.name == "compare"
        assert stage.cmd in done.stdout


def test_foreach_stages_expand_per_item_and_folder_deps_become_the_outputs_inside(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"foreach": "${models}", "do": {
            "cmd": "train -S model=${item}", "params": ["${item}", "demo.${item}"],
            "outs": ["runs/${item}/final.pt"], "metrics": ["reports/eval/${item}.json"]}},
        "compare": {"cmd": "compare", "deps": ["reports/eval", "code.py"], "outs": ["results"]},
    }}, sort_keys=False))
    stages = load_stages(tmp_path / "dvc.yaml", {"models": ["gmpi", "gmnr"]})
    assert list(stages) == ["train@gmpi", "train@gmnr", "compare"]
    gmnr = stages["train@gmnr"]
    assert (gmnr.cmd, gmnr.params, gmnr.outs, gmnr.rule_name) == (
        "train -S model=gmnr", ["gmnr", "demo.gmnr"], ["runs/gmnr/final.pt"], "train_gmnr")
    assert snakemake_inputs(stages["compare"], stages) == ["reports/eval/gmpi.json", "reports/eval/gmnr.json", "code.py"]
    assert folder_readers(stages["compare"], stages) and not folder_readers(gmnr, stages)
    with pytest.raises(ValueError, match="foreach"):
        load_stages(tmp_path / "dvc.yaml", {"models": 5})


def test_foreach_over_a_mapping_names_stages_by_key_and_reads_item_fields(tmp_path):
    """Named ablations: `foreach: ${ablations}` (a mapping), as DVC expands it: ${key}, ${item.model}."""
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "ablation-train": {"foreach": "${ablations}", "do": {
            "cmd": "train --ablation ${key}", "params": ["${item.model}", "ablations.${key}"],
            "outs": ["runs/${item.model}+${key}/final.pt"]}}}}, sort_keys=False))
    stages = load_stages(tmp_path / "dvc.yaml", {"ablations": {"no-vdr": {"model": "gmnr"}}})
    stage = stages["ablation-train@no-vdr"]
    assert (stage.cmd, stage.params, stage.outs, stage.rule_name) == (
        "train --ablation no-vdr", ["gmnr", "ablations.no-vdr"], ["runs/gmnr+no-vdr/final.pt"],
        "ablation_train_no_vdr")
    assert load_stages(tmp_path / "dvc.yaml", {"ablations": {}}) == {}


def test_a_variant_folder_with_a_dot_in_its_name_is_a_folder():
    """Snakemake's directory() flag follows is_directory: a --config run's folders carry dotted slugs."""
    from gmnr.pipeline_spec import is_directory
    for folder in ("data/raw/demo", "data/aligned/my-photos+align.resolution=64", "data/raw/demo+synth.count=50",
                   "runs/demo/gmpi+lr_g=0.0001", "runs/demo/gmpi+h-1a2b3c4d5e", "runs/demo/gmpi/samples"):
        assert is_directory(folder), folder
    for file in ("reports/demo/align.json", "runs/demo/gmpi+lr_g=0.0001/final.pt", "results/table.md",
                 "reports/demo+synth.count=50/evaluate/gmnr+vdr=false.json", "runs/x/render/sweep.mp4"):
        assert not is_directory(file), file


@pytest.mark.slow
def test_snakemake_of_one_target_records_only_the_stages_it_ran_in_dvc_lock(tmp_path):
    """`snakemake source` in a copy whose dvc.lock lists every stage (the repository's, made by a whole run)
    while no later output exists: the run records `source` in dvc.lock (DVC then sees it up to date) and
    leaves the other stages' entries as they were. Recording every stage made `dvc commit` fail on the
    first missing output, so nothing was recorded; recording existing later outputs would pass outputs
    made under other params off as current."""
    from tests.conftest import copy_project
    root = copy_project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synth"]["count"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert "source" in before and "train@gmpi" in before and not (root / "runs").exists()
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "source"], cwd=root,
                          capture_output=True, text=True, env=env_with_venv(), timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "dvc commit failed" not in log, log[-3000:]
    after = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert after["source"] != before["source"]  # three images instead of the whole run's
    assert {k: v for k, v in after.items() if k != "source"} == {k: v for k, v in before.items() if k != "source"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "source"], cwd=root, capture_output=True,
                            text=True, env=env_with_venv(), timeout=300)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
