"""Multi-node training for real: two torchrun launchers on this machine act as two nodes
(``gmnr train --nnodes 2 --node-rank 0|1 --master-addr 127.0.0.1``, one Gloo process each) and must
end where one process with the same total batch ends, within the tolerance
tests/test_train.py justifies for 2 processes against 1. The same two launchers started by one
``sbatch`` with two tasks are in tests/test_slurm.py (:func:`assert_matches_one_process` and
:func:`one_process_run` are shared with it)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import ROOT, env_with_venv, make_disc_dataset
from tests.test_train import TINY

# As in test_two_gloo_processes_match_one_process_with_the_same_total_batch: minibatch-std groups
# and per-process noise would make the split visible, so both are off; 3 steps of batch 4 in all.
COMMON = [*TINY, "-S", "train.steps=3", "-S", "train.checkpoint_every=3", "-S", "train.sample_every=3",
          "-S", "train.noise_mode=const", "-S", "gmpi.mbstd_group_size=1"]
TOTAL_BATCH = 4
_CACHE: dict[str, Path] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    """Training on ``data`` (``<root>/packed``) with ``<root>/params.yaml``, the project's params as
    the session's first run found them: every run compared here reads the same file."""
    return [sys.executable, "-m", "gmnr", "train", "--no-progress", "--params", str(data.parent / "params.yaml"),
            "--input", str(data), "--output", str(out), *COMMON, *extra]


def one_process_run(tmp_path_factory) -> Path:
    """The packed disc set (``<root>/packed``) and one process trained on it with the whole batch
    (``<root>/one``); made once per test session."""
    if "root" not in _CACHE:
        root = tmp_path_factory.mktemp("multinode")
        shutil.copy2(ROOT / "params.yaml", root / "params.yaml")
        make_disc_dataset(root, 12)
        done = subprocess.run(train_cmd(root / "packed", root / "one", "-S", f"train.batch_per_gpu={TOTAL_BATCH}"),
                              env=env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}"),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        _CACHE["root"] = root
    return _CACHE["root"]


def _weights(run_dir: Path, key: str) -> dict:
    from gmnr.train.checkpoint import latest_checkpoint, load_checkpoint
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))[key]


def _initial_generator(params_file: Path) -> dict:
    from gmnr.config import load_params
    from gmnr.models.factory import build_generator
    params = load_params(params_file, [t for t in TINY if t != "-S"])
    torch.manual_seed(params.seed)
    return build_generator(params).state_dict()


def assert_matches_one_process(one: Path, multi: Path, label: str) -> dict[str, float]:
    """The tolerance of tests/test_train.py for 2 processes against 1: no weight of G or D more
    than a quarter of one Adam step (lr / 4 = 5e-4) away, and G's mean difference under 1% of how
    far training moved G. Returns the measured figures."""
    figures = {}
    initial = _initial_generator(one.parent / "params.yaml")
    for key in ("G", "D"):
        a, b = _weights(one, key), _weights(multi, key)
        assert a.keys() == b.keys()
        floats = [k for k in a if a[k].is_floating_point()]
        worst = max((a[k] - b[k]).abs().max().item() for k in floats)
        mean = torch.cat([(a[k] - b[k]).abs().flatten() for k in floats]).mean().item()
        figures[f"{key}_max"], figures[f"{key}_mean"] = worst, mean
        line = f"{label} {key}: max |1 process - 2 nodes| {worst:.2e}, mean {mean:.2e}"
        if key == "G":
            moved = torch.cat([(a[k] - initial[k]).abs().flatten() for k in floats if k in initial]).mean().item()
            figures["G_moved"] = moved
            line += f", mean movement {moved:.2e}"
            assert moved > 1e-4, "training must move the weights for the comparison to mean anything"
            assert mean < 0.01 * moved, line
        print("\n" + line)
        assert worst <= 5e-4, line
    return figures


def test_two_launchers_as_two_nodes_match_one_process_with_the_same_total_batch(tmp_path_factory):
    root = one_process_run(tmp_path_factory)
    out, port = root / "two-nodes", free_port()
    env = env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow-nodes.db'}")
    nodes = []
    start = time.perf_counter()
    for rank in (0, 1):  # each launcher is what one machine runs: its own torchrun, one process
        cmd = train_cmd(root / "packed", out, "-S", f"train.batch_per_gpu={TOTAL_BATCH // 2}", "--gpus", "1",
                        "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                        "--master-port", str(port))
        log = open(root / f"node{rank}.log", "w")
        nodes.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    # a launcher that fails leaves the other waiting for its peer: stop both then, and at the deadline
    deadline = time.time() + 600
    while time.time() < deadline and any(n.poll() is None for n in nodes) and all(n.poll() in (None, 0) for n in nodes):
        time.sleep(0.5)
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    print(f"\ntwo launchers: {time.perf_counter() - start:.1f} s")
    for rank, node in enumerate(nodes):
        assert node.returncode == 0, f"node {rank}: " + (root / f"node{rank}.log").read_text()[-3000:]
    # both launchers joined one job of two processes (torchrun's static rendezvous, node ranks 0, 1)
    summary = json.loads((out / "train.json").read_text())
    assert (summary["world_size"], summary["batch_per_gpu"], summary["step"]) == (2, TOTAL_BATCH // 2, 3), summary
    assert_matches_one_process(root / "one", out, "2 launchers")
