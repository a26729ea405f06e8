# One rule per dvc.yaml stage. Inputs are the stage's deps, outputs its outs and metrics,
# and `params.values` holds exactly the params the stage reads, so changing one reruns that
# stage (and, through its outputs, the stages after it) but never the stages before it.
# STAGES comes from the Snakefile (gmnr.pipeline_spec.load_stages on dvc.yaml).
from gmnr.pipeline_spec import commit_outputs_to_dvc, is_directory, snakemake_inputs


def _output(stage, path):
    out = directory(path) if is_directory(path) else path
    # `snakemake --report` shows the pictures and tables of stages with a category
    if not stage.report or not (is_directory(path) or path.endswith((".png", ".csv", ".gif", ".mp4"))):
        return out
    return report(out, category=stage.report, patterns=["{name}.png"] if is_directory(path) else [])


def _outputs(stage):
    return [_output(stage, p) for p in stage.outs] + stage.metrics


for _stage in STAGES.values():

    rule:
        name: _stage.rule_name
        input: snakemake_inputs(_stage, STAGES)
        output: _outputs(_stage)
        params:
            cmd=_stage.command(OVERRIDES),
            values=_stage.param_values(config),
        log: f"logs/{config['dataset']}/{_stage.rule_name}.log"
        threads: _stage.threads
        resources: **_stage.resources
        conda: str(PROJECT / _stage.conda) if _stage.conda else None
        shell: "{params.cmd} 2>&1 | tee {log}"


onsuccess:
    # Record Snakemake's outputs in dvc.lock so that `dvc repro` and `dvc status` agree with it.
    if (PROJECT / ".dvc").is_dir():
        outputs = [p for s in STAGES.values() for p in s.outs + s.metrics]
        if not commit_outputs_to_dvc(PROJECT, outputs):
            print("gmnr: dvc commit failed; `dvc status` may list these outputs as changed")
