import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path, monkeypatch):
    """Unit tests never write into the project's own MLflow store."""
    if "MLFLOW_TRACKING_URI" not in os.environ:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow-test.db'}")


def env_with_venv(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def copy_project(dest: Path) -> Path:
    """A throw-away copy of the project (tracked + untracked, not ignored files) as a git repo,
    so pipeline tests can run Snakemake and DVC without touching the real workspace."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def use_small_demo(root: Path) -> None:
    """The pipeline tests' demo in ``root/params.yaml``: 40 images, a few training steps from the
    bundled backbone per model, small renders and evaluations (the pipeline, not learning)."""
    import yaml
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synth"]["count"] = 40
    params["demo"]["gmpi"].update(planes_train=4, planes_eval=4)
    params["demo"]["train"].update(steps=4, checkpoint_every=2, sample_every=2, log_every=1, grid_latents=2,
                                   grid_views=2)
    params["render"].update(seeds=2, frames=4)
    params["demo"]["evaluate"].update(fid_images=16, identity_pairs=2, geometry_images=2, speed_frames=2, speed_warmup=1,
                                      with_init=False)  # the untrained baseline is tested in test_evaluate
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory) -> Path:
    """The small demo run once by ``snakemake --cores 2`` in a copy of the project, shared by the
    tests that need a finished pipeline (test_pipeline, test_slurm's local reference,
    test_dvc_remote), so it runs once per session."""
    import time
    root = copy_project(tmp_path_factory.mktemp("project"))
    use_small_demo(root)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=root, capture_output=True,
                          text=True, env=env_with_venv(), timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"\nfirst snakemake run of the small demo: {time.perf_counter() - start:.1f} s")
    return root


def run_cli(*args, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gmnr", *args], cwd=cwd, env=env or env_with_venv(),
                          capture_output=True, text=True, timeout=timeout)


def make_disc_dataset(root: Path, count: int) -> Path:
    """A small packed set (what `gmnr pack` writes) of 16 px coloured discs on random backgrounds
    with known cameras, under ``root/packed``; the raw images under ``root/raw``."""
    import numpy as np
    import pandas as pd
    import torch

    from gmnr.data.images import write_png_atomic
    from gmnr.preprocess.pack import pack_dataset
    from gmnr.preprocess.pose import CAM2WORLD_COLUMNS
    from gmnr.render.camera import pose_to_cam2world

    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        img = np.zeros((16, 16, 3), np.uint8) + rng.integers(0, 255, 3).astype(np.uint8)
        yy, xx = np.mgrid[:16, :16]
        img[(yy - 8) ** 2 + (xx - 8) ** 2 < 20] = [200, 150, 120]
        write_png_atomic(root / "raw" / "images" / f"{i:03d}.png", img)
        yaw = float(rng.normal(0, 0.2))
        c2w = pose_to_cam2world(torch.tensor([yaw], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
        rows.append({"file": f"{i:03d}.png", "status": "ok", "yaw": yaw,
                     **dict(zip(CAM2WORLD_COLUMNS, c2w[0].ravel().tolist()))})
    pack_dataset(root / "raw", pd.DataFrame(rows), root / "packed", 16, 12.6, {}, 90, progress=False)
    return root / "packed"
