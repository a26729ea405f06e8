"""dvc.yaml is the one description of the pipeline: DVC's own reading of it and the
Snakemake rules generated from it must agree on commands, deps, params and outs."""
import subprocess
import sys

import yaml

from gmnr.pipeline_spec import load_stages
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
        dvc_params = sorted(k for d in stage.deps if hasattr(d, "params") and d.params for k in d.params)
        assert dvc_params == sorted(mine.params)


def test_snakemake_rules_are_the_dvc_stages_with_a_switched_dataset():
    """--config dataset=... changes every path in the rules, as `dvc exp run -S dataset=...` does."""
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--forceall", "-p",
                           "--config", "dataset=ffhq256"], cwd=ROOT, capture_output=True, text=True,
                          env=env_with_venv(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = load_stages(ROOT / "dvc.yaml", {**_config(), "dataset": "ffhq256"})
    for name, stage in stages.items():
        assert f"rule {name}:" in done.stdout
        for out in stage.outs:
            assert out in done.stdout and "ffhq256" in out
        assert stage.cmd in done.stdout
