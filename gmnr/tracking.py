"""MLflow tracking for pipeline stages: one run per stage execution.

Tracking is a side channel. If the store cannot be reached, or MLflow fails half-way, the
stage prints one warning and carries on; its outputs never depend on tracking.

Defaults: a SQLite store ``mlflow.db`` and artifacts under ``mlartifacts/`` in the project
root, so ``mlflow ui`` started in the project root shows every run with no server.
``MLFLOW_TRACKING_URI`` selects another store (for example a shared ``http://`` server).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

from gmnr.config import PROJECT_ROOT, Params, section_hash

EXPERIMENT_ENV = "GMNR_EXPERIMENT"
PIPELINE_ENV = "GMNR_PIPELINE_ID"
PARENT_ENV = "GMNR_PARENT_RUN_ID"  # the pipeline invocation's run, which the stage runs nest under
DEFAULT_EXPERIMENT = "gmnr"
MODEL_STAGES = ("train", "render", "evaluate")  # the stages that have a model (and the model tag)
PIPELINE_STAGE = "pipeline"  # the `stage` tag of a pipeline invocation's parent run
# MLflow 3 records what an experiment is for; without it the UI opens on its GenAI overview (traces).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# The runs table as the project shows it: the MLflow UI's shared view state (experiment tag
# mlflow.sharedViewState.<key>, opened by ...?viewStateShareKey=<key>), with the key tags and metrics
# of every stage as columns. The UI has no server-side default for columns, so stages print this link.
VIEW_KEY = "gmnr-pipeline"
VIEW_COLUMNS = ("tags.`stage`", "tags.`dataset`", "tags.`model`", "tags.`ablation`", "metrics.`fid`",
                "metrics.`kid`", "metrics.`identity_similarity`", "metrics.`pose_mse`", "metrics.`depth_mse`",
                "metrics.`fps`", "metrics.`loss_G`", "metrics.`loss_D`", "metrics.`duration_s`")
_CONTEXT: dict[str, str] = {}


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("-dirty" if dirty else "")


def _ancestor_engine() -> str | None:
    """``snakemake-<pid>`` / ``dvc-<pid>`` for the workflow engine that started us (Linux /proc)."""
    pid = os.getppid()
    for _ in range(12):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        words = [Path(c.decode(errors="replace")).name for c in cmdline[:3]]
        for engine in ("snakemake", "dvc"):
            if any(w == engine or w.startswith(engine + " ") for w in words):
                start_ticks = stat.rsplit(")", 1)[1].split()[19]
                return f"{engine}-{pid}-{start_ticks}"
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            return None
    return None


def pipeline_id() -> str:
    """Id shared by every stage run of one ``snakemake``/``dvc repro`` invocation."""
    return os.environ.get(PIPELINE_ENV) or _ancestor_engine() or f"standalone-{uuid.uuid4().hex[:12]}"


_PROBED: dict[str, str | None] = {}
_ANNOUNCED: list[str] = []


def _probe_sqlite(path: str, timeout_s: float) -> None:
    """Open the database file and take (then release) a write lock: what every run needs. An
    unopenable or read-only file fails here at once; MLflow itself retries for about 100 s."""
    import sqlite3
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=timeout_s)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.rollback()
    finally:
        con.close()


def _probe(uri: str, timeout_s: float) -> None:
    if uri.startswith(("http://", "https://")):
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).read()
    elif uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            _probe_sqlite(path, timeout_s)
    elif "://" in uri and not uri.startswith("file:"):  # postgresql://, mysql://, ...: is anything listening?
        import socket
        parsed = urllib.parse.urlsplit(uri)
        if parsed.hostname:
            default = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(parsed.scheme.split("+")[0])
            if parsed.port or default:
                socket.create_connection((parsed.hostname, parsed.port or default), timeout=timeout_s).close()


def _reachable(uri: str, timeout_s: float = 3.0) -> str | None:
    """None when the store looks usable, else the reason it is not. Probed once per process and
    store, before any run starts, so an unusable store costs one warning, not retries per call."""
    if uri not in _PROBED:
        try:
            _probe(uri, timeout_s)
            _PROBED[uri] = None
        except Exception as exc:  # any failure means: do not block the stage on it
            _PROBED[uri] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return _PROBED[uri]


class StageRun:
    """Thin, failure-tolerant handle on one MLflow run."""

    def __init__(self, mlflow_module=None, run_id: str | None = None):
        self._mlflow = mlflow_module
        self.run_id = run_id
        self.pipeline_run_id: str | None = None  # a parent run this stage must end (DVC), else None
        self.experiment_id: str | None = None

    def run_link(self, run_id: str) -> str:
        """A link to another run of this experiment, as the MLflow UI resolves it in a description."""
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"

    def set_description(self, markdown: str) -> None:
        """The run's description (shown, as Markdown, at the top of its page)."""
        self.set_tags({"mlflow.note.content": markdown})

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def _call(self, what: str, fn, *args, **kwargs):
        if self._mlflow is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            warnings.warn(f"MLflow tracking disabled for this stage ({what} failed: {exc})", stacklevel=3)
            self._mlflow = None
            return None

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: (str(v)[:500]) for k, v in _flatten(params).items()}
        self._call("log_params", lambda: self._mlflow.log_params(flat))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in _flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._call("log_metrics", lambda: self._mlflow.log_metrics(numeric, step=step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._call("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def log_dict(self, data: dict, name: str) -> None:
        self._call("log_dict", lambda: self._mlflow.log_dict(data, name))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", lambda: self._mlflow.set_tags({k: str(v) for k, v in tags.items()}))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_run_context(tags: dict[str, str]) -> None:
    """Tags that the stage runs of this process get (the CLI's labels of the run it executes: its
    ablation, data variant and run folder, from gmnr.experiment); a stage's own tags win."""
    _CONTEXT.clear()
    _CONTEXT.update({k: str(v) for k, v in tags.items()})


def run_name(stage: str, tags: dict[str, str]) -> str:
    """What a run is, in the runs table: ``train demo/gmpi``, ``evaluate demo/gmnr vdr=false``,
    ``evaluate demo/gmnr init``, ``pack demo+synth.count=50``, ``compare``."""
    if stage == "compare":
        return "compare"
    variant = tags.get("data_variant", "default")
    variant = "" if variant in ("", "default") else variant
    if stage not in MODEL_STAGES:
        return f"{stage} {tags.get('dataset', '')}{'+' + variant if variant else ''}".strip()
    name = f"{stage} {tags.get('dataset', '')}/{tags.get('model', '')}"
    if variant:
        name += f" [data {variant}]"
    ablation, named = tags.get("ablation", "default"), tags.get("ablation_name", "")
    if named:
        name += f" {named}:"
    if ablation not in ("", "default"):
        name += f" {ablation}"
    return name[:250]


# MLflow 3.17's UI opens an experiment as its sidebar's workflow type says (GenAI unless the URL or the
# browser's last choice says otherwise): the project's links name the runs table's type.
RUNS_TABLE_QUERY = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def runs_table_path(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?{RUNS_TABLE_QUERY}"


def runs_table_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The runs table with the project's columns (``mlflow ui`` serves on port 5000 by default)."""
    return f"{base}/{runs_table_path(experiment_id)}"


def _view_state() -> str:
    """The shared view: the project's columns, in order, a run-name column wide enough for
    ``evaluate demo/gmnr vdr=false``, newest first. (Each pipeline invocation is one row whose ``+``
    unfolds its stage runs: a shared view cannot store which rows are unfolded.)"""
    import json
    return json.dumps({"selectedColumns": list(VIEW_COLUMNS),
                       "columnOrder": ["attributes.`Run Name`", "attributes.`Created`", *VIEW_COLUMNS],
                       "columnWidths": {"attributes.`Run Name`": 340}, "orderByKey": "attributes.start_time",
                       "orderByAsc": False, "searchFilter": "", "runsHiddenMode": "SHOW_ALL"})


def _experiment_description(experiment_id: str) -> str:
    return (f"One run per stage execution of the gmnr pipeline, nested under one run per pipeline invocation "
            f"(`stage = pipeline`; its `+` unfolds them). **[Runs table with the pipeline's columns]"
            f"({runs_table_path(experiment_id)})**: stage, dataset, model and ablation, FID, KID, identity, pose, "
            f"depth, FPS, losses and duration. "
            f"`gmnr compare` builds the comparison table (results/table.md) from the `evaluate` runs.")


def ensure_experiment(mlflow, name: str, uri: str) -> str:
    """The experiment's id, created when missing, with the tags that make the UI open on its runs
    table (the experiment kind), the project's columns (a shared view state) and a description."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = (PROJECT_ROOT / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
        have: dict[str, str] = {}
    else:
        experiment_id, have = experiment.experiment_id, dict(experiment.tags or {})
    want = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, f"mlflow.sharedViewState.{VIEW_KEY}": _view_state(),
            "mlflow.note.content": _experiment_description(experiment_id)}
    client = mlflow.MlflowClient()
    for key, value in want.items():
        if have.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)
    return experiment_id


def _parent_run(mlflow, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The run of this pipeline invocation (``GMNR_PARENT_RUN_ID``, which the Snakefile creates when
    the workflow starts; under DVC the first stage creates it, found again by its pipeline id), or
    None for a stage run by hand."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    pid = tags.get("pipeline_id", "")
    if not pid.startswith(("dvc-", "snakemake-")):
        return None
    client = mlflow.MlflowClient()
    found = client.search_runs([experiment_id], filter_string=f"tags.stage = '{PIPELINE_STAGE}' and "
                                                              f"tags.pipeline_id = '{pid}'", max_results=1)
    if found:
        return found[0].info.run_id
    return start_pipeline_run(pid, client=client, experiment_id=experiment_id)


def start_pipeline_run(pipeline: str, client=None, experiment_id: str | None = None) -> str | None:
    """Create the parent run of one pipeline invocation (``pipeline <engine> <time>``); returns its
    id, or None when the store cannot be used (a warning, as for stages)."""
    uri = default_tracking_uri()
    if _reachable(uri):
        return None
    try:
        import mlflow
        mlflow.set_tracking_uri(uri)
        client = client or mlflow.MlflowClient()
        if experiment_id is None:
            experiment_id = ensure_experiment(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT), uri)
        engine = pipeline.split("-")[0]
        run = client.create_run(experiment_id, run_name=f"pipeline {engine} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                tags={"stage": PIPELINE_STAGE, "pipeline_id": pipeline, "engine": engine,
                                      "git_commit": git_commit(), "command": _command()})
        return run.info.run_id
    except Exception as exc:
        warnings.warn(f"could not create the pipeline's MLflow run in {uri}: {exc}", stacklevel=2)
        return None


def end_pipeline_run(run_id: str | None, status: str = "FINISHED") -> None:
    """Mark the pipeline invocation's run finished (or failed); it stays open while stages run."""
    if not run_id or _reachable(default_tracking_uri()):
        return
    try:
        from mlflow.tracking import MlflowClient
        MlflowClient(default_tracking_uri()).set_terminated(run_id, status)
    except Exception as exc:
        warnings.warn(f"could not end the pipeline's MLflow run {run_id}: {exc}", stacklevel=2)


def _command() -> str:
    return " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:500]


def _start(stage: str, tags: dict[str, str], resume_run_id: str | None = None) -> StageRun:
    uri = default_tracking_uri()
    reason = _reachable(uri)
    if reason:
        warnings.warn(f"MLflow store {uri} unreachable ({reason}); stage '{stage}' runs without tracking",
                      stacklevel=3)
        return StageRun()
    # An unreachable server must not stall a stage for minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        import logging

        import mlflow
        logging.getLogger("alembic").setLevel(logging.WARNING)
        mlflow.set_tracking_uri(uri)
        experiment_id = ensure_experiment(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT), uri)
        parent = None
        if resume_run_id:  # a resumed training job continues its own run
            run = mlflow.start_run(run_id=resume_run_id)
        else:
            parent = _parent_run(mlflow, experiment_id, tags)
            if parent:  # nested under the pipeline invocation's run
                tags = {**tags, "mlflow.parentRunId": parent}
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(stage, tags), tags=tags)
        handle = StageRun(mlflow, run.info.run_id)
        handle.experiment_id = run.info.experiment_id
        if not resume_run_id and parent and not os.environ.get(PARENT_ENV):
            # Under DVC nothing ends the pipeline's run but its stages: each leaves it as it ends.
            handle.pipeline_run_id = parent
        if not _ANNOUNCED:
            _ANNOUNCED.append(experiment_id)
            if uri.startswith("sqlite:"):
                print(f"MLflow: `mlflow ui` in {PROJECT_ROOT}, then {runs_table_url(experiment_id)}",
                      file=sys.stderr, flush=True)
        return handle
    except Exception as exc:
        warnings.warn(f"MLflow store {uri} unusable ({type(exc).__name__}: {exc}); "
                      f"stage '{stage}' runs without tracking", stacklevel=3)
        return StageRun()


@contextlib.contextmanager
def stage_run(stage: str, params: Params, extra_tags: dict[str, str] | None = None,
              resume_run_id: str | None = None, enabled: bool = True, *,
              sections: tuple[str, ...] | None = None) -> Iterator[StageRun]:
    """Open one MLflow run for a stage; log the params sections it reads and its duration. The sections
    are dvc.yaml's list for the stage (gmnr.pipeline_spec.stage_sections), unless ``sections`` names
    them (a run that is no pipeline stage).

    The run ends FINISHED when the body returns and FAILED when it raises (the exception
    propagates unchanged).
    """
    from gmnr.pipeline_spec import stage_sections
    dumped = params.model_dump(mode="json")
    if sections is None:
        sections = stage_sections(f"{stage}@{params.model}" if stage in MODEL_STAGES else stage, params)
    # A custom dataset is tagged (and tabled) by its own name, so two folders of photos never share rows
    tags = {"stage": stage, "dataset": params.dataset_name(), "git_commit": git_commit(),
            "params_hash": section_hash(params, *sections), "pipeline_id": pipeline_id(), "command": _command()}
    if stage in MODEL_STAGES:  # tags only where they apply: a data stage has no model
        tags["model"] = params.model
    tags.update({k: v for k, v in _CONTEXT.items() if stage in MODEL_STAGES or k == "data_variant"})
    if params.dataset == "custom":
        tags["dataset_kind"] = "custom"
    tags.update(extra_tags or {})
    run = _start(stage, tags, resume_run_id) if enabled else StageRun()
    if not resume_run_id:
        run.log_params({"dataset": params.dataset_name(), "seed": params.seed,
                        **{s: dumped[s] for s in sections if s in dumped and s not in ("dataset", "seed")}})
    started = time.perf_counter()
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        run.log_metrics({"duration_s": time.perf_counter() - started})
        if run.active:
            run._call("end_run", lambda: run._mlflow.end_run(status=status))
        if run.pipeline_run_id:
            end_pipeline_run(run.pipeline_run_id, status)


def attach_artifacts(run_id: str, files: list[Path], artifact_path: str) -> None:
    """Add files to an existing run (the training run a render belongs to); warn on failure."""
    uri = default_tracking_uri()
    if _reachable(uri):
        return
    try:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(uri)
        for f in files:
            client.log_artifact(run_id, str(f), artifact_path)
    except Exception as exc:
        warnings.warn(f"could not attach {artifact_path} artifacts to run {run_id}: {exc}", stacklevel=2)
