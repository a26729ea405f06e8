"""Data and checkpoints between machines through the project's DVC remote.

The small demo's outputs (a copy of tests/conftest.py's demo_project) are pushed to the project's
default remote (.dvc-remote/), the repository is cloned afresh, as on a second machine, and `dvc pull` there must
give a workspace `dvc status` calls up to date, whose pulled checkpoint evaluates to the original's
metrics. What git carries is what DVC leaves to it: dvc.lock, params.yaml and the outputs marked
`cache: false` (metrics, tables, training checkpoints); everything DVC caches travels through the
remote. Slow: marked `slow`, still part of `make test` / CI."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import env_with_venv

pytestmark = pytest.mark.slow
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def _run(args, cwd, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env_with_venv(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def _outputs(root: Path) -> tuple[set[str], set[str]]:
    """DVC's own reading of dvc.yaml: the outputs it caches and those it leaves to git."""
    from dvc.repo import Repo
    with Repo(str(root)) as repo:
        outs = [o for stage in repo.index.stages for o in stage.outs]
    return {str(o.def_path) for o in outs if o.use_cache}, {str(o.def_path) for o in outs if not o.use_cache}


def measured(report: dict) -> dict:
    """What an evaluation measured of the generator: every metric it names a back end for, but
    the frames per second (a timing of this machine at that moment)."""
    names = set(report["backends"]) - {"fps"}
    assert {"fid", "kid"} <= names, report["backends"]
    return {k: report["metrics"][k] for k in sorted(names)}


def _files(root: Path, rel: str) -> dict[str, bytes]:
    """The data files of an output: not Snakemake's empty `.snakemake_timestamp` marker, which
    .dvcignore keeps out of DVC's hashes (and so out of the remote)."""
    from gmnr.staging import ENGINE_FILES
    path = root / rel
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name not in ENGINE_FILES)
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def test_push_clone_pull_gives_an_up_to_date_workspace_and_the_same_metrics(demo_project, tmp_path):
    # a copy of the finished demo (outputs, dvc.lock, DVC cache, git history): the commit and the push
    # below change nothing the other users of demo_project see
    origin = tmp_path / "first-machine"
    shutil.copytree(demo_project, origin, symlinks=True)
    cached, to_git = _outputs(origin)
    assert "data/processed/demo" in cached and "runs/demo/gmpi/final.pt" in cached, cached

    start = time.perf_counter()
    remote_name = _run(["dvc", "remote", "default"], origin).stdout.strip()
    _run(["dvc", "push"], origin)
    pushed = time.perf_counter() - start
    remote = origin / ".dvc-remote"
    assert remote.is_dir() and any(remote.rglob("*")), "dvc push filled the project's remote, .dvc-remote/"
    # the commit a user pushes: the lock, the params, and the outputs DVC does not cache (forced
    # past .gitignore, which keeps run products out of the project's own history)
    _run([*GIT, "add", "dvc.lock", "params.yaml"], origin)
    _run([*GIT, "add", "-f", *sorted(p for p in to_git if (origin / p).exists())], origin)
    _run([*GIT, "commit", "-qm", "demo results"], origin)

    clone = tmp_path / "second-machine"
    _run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    assert not (clone / "data" / "processed" / "demo").exists() and not (clone / "runs" / "demo" / "gmpi" / "final.pt").exists()
    # the clone's remote is the first machine's folder (with S3 or SSH the committed URL serves both)
    _run(["dvc", "remote", "modify", "--local", remote_name, "url", str(remote)], clone)
    start = time.perf_counter()
    _run(["dvc", "pull"], clone)
    pulled = time.perf_counter() - start
    status = _run(["dvc", "status"], clone).stdout
    print(f"\ndvc push {pushed:.1f} s, dvc pull {pulled:.1f} s; dvc status in the clone: {status.strip()}")
    assert "Data and pipelines are up to date." in status, status
    for rel in sorted(cached):
        assert _files(clone, rel) == _files(origin, rel), f"{rel} differs after the round trip"

    # the pulled checkpoint measures what the original measured (timings aside)
    checkpoint = clone / "runs" / "demo" / "gmpi" / "final.pt"
    start = time.perf_counter()
    _run([sys.executable, "-m", "gmnr", "evaluate", "-S", "model=gmpi", "--checkpoint", str(checkpoint),
          "--output", str(tmp_path / "pulled-gmpi.json")], clone)
    print(f"gmnr evaluate on the pulled checkpoint: {time.perf_counter() - start:.1f} s")
    mine = measured(json.loads((tmp_path / "pulled-gmpi.json").read_text()))
    theirs = measured(json.loads((origin / "reports" / "demo" / "evaluate" / "gmpi.json").read_text()))
    assert mine == theirs
    print("metrics equal: " + ", ".join(f"{k} {v:.6g}" for k, v in theirs.items()))
    assert "Data and pipelines are up to date." in _run(["dvc", "status"], clone).stdout
