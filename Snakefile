# gmnr pipeline for Snakemake. The stages themselves are defined once, in dvc.yaml
# (commands, deps, params, outs); workflow/rules/stages.smk turns each into a rule.
#   snakemake --cores all                          # the demo, or whatever params.yaml selects
#   snakemake --cores all --config dataset=ffhq256 # another dataset, one value
#   snakemake --profile workflow/profiles/slurm    # on a SLURM cluster
import os
import sys
import uuid
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "params.yaml"

sys.path.insert(0, workflow.basedir)
from gmnr.config import ParamsError, overrides_between, resolve

# params.yaml, then the demo section when dataset is demo, then --config (as `-S` would).
RAW_PARAMS = yaml.safe_load(Path(workflow.basedir, "params.yaml").read_text())
OVERRIDES = overrides_between(RAW_PARAMS, config)
try:
    PARAMS = resolve(RAW_PARAMS, OVERRIDES, "params (params.yaml + --config)")
except ParamsError as err:
    sys.stderr.write(f"gmnr: {err}\n")
    sys.exit(2)
# Typed, resolved values replace the raw ones (--config hands nested values over as strings).
config.clear()
config.update(PARAMS.model_dump(mode="json"))
validate(config, "workflow/schemas/params.schema.json")

# Jobs run `python -m gmnr ...`: without --use-conda that must be the Python running Snakemake.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
# One id ties the MLflow runs of this invocation together (jobs inherit the environment).
os.environ.setdefault("GMNR_PIPELINE_ID", f"snakemake-{uuid.uuid4().hex[:12]}")
os.environ["GMNR_ENGINE"] = "snakemake"  # gmnr leaves recording in dvc.lock to onsuccess below

from gmnr.experiment import plan_stages

PROJECT = Path(workflow.basedir)
# dvc.yaml's stages; under --config, a run that differs from params.yaml's writes to folders of its own
# (runs/demo/gmnr+vdr=false/, data/raw/demo+synth.count=50/: gmnr/experiment.py), never to the default's.
STAGES = plan_stages(PROJECT / "dvc.yaml", RAW_PARAMS, OVERRIDES, "params (params.yaml + --config)")


rule all:
    input:
        [p for stage in STAGES.values() for p in stage.outs + stage.metrics],
    default_target: True


include: "workflow/rules/stages.smk"
