# One rule per dvc.yaml stage. Inputs are the stage's deps, outputs its outs and metrics,
# and `params.values` holds exactly the params the stage reads, so changing one reruns that
# stage (and, through its outputs, the stages after it) but never the stages before it.
# STAGES comes from the Snakefile (gmnr.pipeline_spec.load_stages on dvc.yaml).
from gmnr.pipeline_spec import commit_outputs_to_dvc, folder_readers, is_directory, snakemake_inputs


def _output(stage, path):
    out = directory(path) if is_directory(path) else path
    # `snakemake --report` shows the pictures and tables of stages with a category
    if not stage.report or not (is_directory(path) or path.endswith((".png", ".csv", ".md", ".gif", ".mp4"))):
        return out
    return report(out, category=stage.report, patterns=["{name}.png"] if is_directory(path) else [])


def _outputs(stage):
    return [_output(stage, p) for p in stage.outs] + stage.metrics


def _log(stage):
    """The job's log: a --config run's (``stage.variant``) beside the default run's, never over it."""
    import hashlib
    suffix = "+" + hashlib.sha256(stage.variant.encode()).hexdigest()[:10] if stage.variant else ""
    return f"logs/{PARAMS.dataset_name()}/{stage.rule_name}{suffix}.log"  # a custom dataset: its own name


for _stage in STAGES.values():

    rule:
        name: _stage.rule_name
        input: snakemake_inputs(_stage, STAGES)
        output: _outputs(_stage)
        params:
            cmd=_stage.command(OVERRIDES),
            values=_stage.param_values(config),
        log: _log(_stage)
        threads: _stage.threads
        resources: **_stage.resources
        conda: str(PROJECT / _stage.conda) if _stage.conda else None
        shell: "{params.cmd} 2>&1 | tee {log}"


onstart:
    # One MLflow run for this invocation; the stage runs nest under it (jobs inherit the environment).
    from gmnr.tracking import PARENT_ENV, start_pipeline_run
    _parent = start_pipeline_run(os.environ["GMNR_PIPELINE_ID"])
    if _parent:
        os.environ[PARENT_ENV] = _parent


def _forget_folder_readers():
    """compare reads every evaluation from the tracking store; its inputs (the evaluation reports, as DVC
    reads their folder) only order it after the evaluations and rerun it when one is newer. Snakemake
    would also rerun it whenever that set of files differs from the one its last Snakemake run saw (after
    a --config ablation, or once DVC ran compare with a named ablation's report), where DVC, which reads
    the folder, sees nothing to do: so Snakemake keeps no record of such a stage's inputs (file times
    still rerun it)."""
    from snakemake.io import IOFile

    from gmnr.pipeline_spec import load_stages
    if workflow.persistence is None:
        return
    declared = load_stages(PROJECT / "dvc.yaml", config)  # as dvc.yaml lists them: folder deps unexpanded
    for name, stage in declared.items():
        if folder_readers(stage, declared) and name in STAGES:
            for path in STAGES[name].outs + STAGES[name].metrics:
                workflow.persistence.cleanup_metadata(IOFile(path))


onsuccess:
    from gmnr.tracking import PARENT_ENV, end_pipeline_run
    end_pipeline_run(os.environ.get(PARENT_ENV), "FINISHED")
    _forget_folder_readers()
    # Record Snakemake's outputs in dvc.lock so that `dvc repro` and `dvc status` agree with it: only
    # the stages run exactly as dvc.yaml and params.yaml define them (a --config run's own folders, or
    # outputs made under other params, are not what dvc.lock would say they are), and only those this
    # invocation brought up to date: `snakemake pack` says nothing of the stages after pack, whose
    # outputs may be missing (dvc commit would fail) or made under other params (it would record them).
    if (PROJECT / ".dvc").is_dir():
        in_this_run = {job.rule.name for job in workflow.dag.jobs}
        recorded = [s for s in STAGES.values() if not s.variant and s.rule_name in in_this_run]
        outputs = [p for s in recorded for p in s.outs + s.metrics]
        if not commit_outputs_to_dvc(PROJECT, outputs, [s.name for s in recorded]):
            print("gmnr: dvc commit failed; `dvc status` may list these outputs as changed")
        skipped = [s.name for s in STAGES.values() if s.variant]
        if skipped:
            print(f"gmnr: not recorded in dvc.lock (run under --config): {', '.join(skipped)}")


onerror:
    from gmnr.tracking import PARENT_ENV, end_pipeline_run
    end_pipeline_run(os.environ.get(PARENT_ENV), "FAILED")
    _forget_folder_readers()
