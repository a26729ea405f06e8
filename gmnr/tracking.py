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
DEFAULT_EXPERIMENT = "gmnr"


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
        name = os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            location = (PROJECT_ROOT / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        if resume_run_id:  # a resumed training job continues its own run
            run = mlflow.start_run(run_id=resume_run_id)
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=f"{stage}:{tags.get('dataset', '')}",
                                   tags=tags)
        return StageRun(mlflow, run.info.run_id)
    except Exception as exc:
        warnings.warn(f"MLflow store {uri} unusable ({type(exc).__name__}: {exc}); "
                      f"stage '{stage}' runs without tracking", stacklevel=3)
        return StageRun()


@contextlib.contextmanager
def stage_run(stage: str, params: Params, sections: tuple[str, ...], extra_tags: dict[str, str] | None = None,
              resume_run_id: str | None = None, enabled: bool = True) -> Iterator[StageRun]:
    """Open one MLflow run for a stage; log the params sections it reads and its duration.

    The run ends FINISHED when the body returns and FAILED when it raises (the exception
    propagates unchanged).
    """
    dumped = params.model_dump(mode="json")
    tags = {"stage": stage, "dataset": params.dataset, "model": params.model, "git_commit": git_commit(),
            "params_hash": section_hash(params, *sections), "pipeline_id": pipeline_id(),
            "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:500], **(extra_tags or {})}
    run = _start(stage, tags, resume_run_id) if enabled else StageRun()
    if not resume_run_id:
        run.log_params({"dataset": params.dataset, "seed": params.seed, **{s: dumped[s] for s in sections}})
    started = time.perf_counter()
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        run.log_metrics({"duration_s": time.perf_counter() - started})
        if run.active:
            run._call("end_run", lambda: run._mlflow.end_run(status=status))


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
