"""kill -9 every pipeline stage at random moments; the rerun must complete, equal an uninterrupted
run, and leave no temporary file behind (issue 19).

For each stage, in pipeline order (synth, landmarks, pose, pack, train, render, evaluate, compare),
on a tiny demo in a scratch folder:

1. run it once uninterrupted (the reference; its inputs are the previous stages' references);
2. run it once more, uninterrupted, into the trial output (its duration is what a rerun takes
   there: warm caches, an existing output to replace); then ``--trials`` times: start the same
   command, SIGKILL its process group at a moment drawn uniformly from 5-95 % of that duration
   (drawn again, up to 5 times, if the process finished first), rerun it to completion, and
   compare the trial's outputs with the reference's. Every trial starts from a complete earlier
   output, so a kill can also land while a finished output is being replaced;
3. look for temporaries (``.tmp``, ``.staging``, ``.partial-``, ``tmp-<pid>``) anywhere under the
   trial's output.

What "equal" means per stage: identical bytes for every data file (images, tables, keypoint files,
packed set, sample grids, videos, result table); for train, identical tensors in final.pt and the
checkpoints (final.pt also records an MLflow run id); for evaluate, identical metric values
(timings and FPS aside). Reports with timings are not compared.

    python benchmarks/kill_stages.py                      # every stage, 3 kills each
    python benchmarks/kill_stages.py --stages pack train --trials 5 --seed 1
    python benchmarks/kill_stages.py --out kill.json      # the results as JSON too
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["synth", "landmarks", "pose", "pack", "train", "render", "evaluate", "compare"]
TEMPORARY = re.compile(r"(\.tmp($|[-.\d])|\.staging$|\.partial-|\.old-|\.part$|\.tmp-\d+$|tmp\d+$)")
# Small enough for 2 CPU cores, large enough that every stage has work to be killed in.
OVERRIDES = [
    "synth.count=10", "synth.resolution=128", "synth.threads=1", "pack.resolution=16",
    "gmpi.pretrained=null", "gmpi.z_dim=16", "gmpi.w_dim=16", "gmpi.mapping_layers=2", "gmpi.channel_base=256",
    "gmpi.channel_max=32", "gmpi.planes_train=4", "gmpi.planes_eval=4", "model=gmpi", "models=[gmpi]",
    "train.steps=12", "train.checkpoint_every=3", "train.sample_every=6", "train.log_every=3",
    "train.batch_per_gpu=2", "train.views_per_latent=2", "train.r1_interval=2", "train.grid_latents=2",
    "train.grid_views=2", "train.threads=1", "train.device=cpu",
    "render.seeds=2", "render.frames=6",
    "evaluate.fid_images=16", "evaluate.identity_pairs=2", "evaluate.geometry_images=2", "evaluate.speed_frames=2",
    "evaluate.speed_warmup=1", "evaluate.kid_subset_size=8", "evaluate.kid_subsets=4", "evaluate.with_init=false",
    "evaluate.device=cpu", "evaluate.threads=1",
]


def _command(stage: str, ref: Path, out: Path) -> list[str]:
    """The stage's command: inputs from the reference run, outputs under ``out``."""
    args = {
        "synth": ["synth", "--output", out / "raw"],
        "landmarks": ["landmarks", "--input", ref / "raw", "--output", out / "interim"],
        "pose": ["pose", "--input", ref / "raw", "--landmarks", ref / "interim" / "landmarks.csv",
                 "--output", out / "interim"],
        "pack": ["pack", "--input", ref / "raw", "--poses", ref / "interim" / "poses.csv", "--output", out / "packed"],
        "train": ["train", "--input", ref / "packed", "--output", out / "run"],
        "render": ["render", "--checkpoint", ref / "run" / "final.pt", "--output", out / "render"],
        "evaluate": ["evaluate", "--checkpoint", ref / "run" / "final.pt", "--input", ref / "packed",
                     "--output", out / "eval" / "metrics.json"],
        "compare": ["compare", "--output", out / "results"],
    }[stage]
    overrides = [x for o in OVERRIDES for x in ("-S", o)]
    return [sys.executable, "-m", "gmnr", *map(str, args), "--no-progress", "--params", str(ref.parent / "params.yaml"),
            "--reports", str(out / "reports"), *overrides, "-S", f"paths.runs={ref.parent / 'runs'}"]


def _outputs(stage: str, out: Path) -> Path:
    return {"synth": out / "raw", "landmarks": out / "interim", "pose": out / "interim", "pack": out / "packed",
            "train": out / "run", "render": out / "render", "evaluate": out / "eval", "compare": out / "results"}[stage]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _tensors(path: Path, keys) -> dict:
    import torch
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {"step": state.get("step")}
    for key in keys:
        for name, t in (state.get(key) or {}).items():
            out[f"{key}.{name}"] = _sha(t.detach().cpu().contiguous().numpy().tobytes())
    return out


def fingerprint(stage: str, out: Path) -> dict:
    """What must be equal between an interrupted-then-rerun output and an uninterrupted one."""
    folder = _outputs(stage, out)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    rel = lambda p: p.relative_to(folder).as_posix()  # noqa: E731
    if stage == "pose":
        files = [p for p in files if p.name == "poses.csv"]
    if stage == "landmarks":
        files = [p for p in files if p.name != "poses.csv"]
    if stage == "train":
        found = {}
        for p in files:
            if p.name == "final.pt":
                found[rel(p)] = _tensors(p, ("G_ema", "D"))
            elif p.suffix == ".pt":
                found[rel(p)] = _tensors(p, ("G", "D", "G_ema"))
            elif p.suffix == ".png":
                found[rel(p)] = _sha(p.read_bytes())
        return found  # train.json holds timings; it is checked for presence only
    if stage == "evaluate":
        report = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
        skip = re.compile(r"second|fps|speed|time|cached")
        return {k: v for k, v in sorted(report.get("metrics", {}).items()) if not skip.search(k)}
    if stage == "render":
        found = {rel(p): _sha(p.read_bytes()) for p in files if p.name != "render.json"}
        report = folder / "render.json"
        found["render.json:files"] = sorted(Path(f).name for f in json.loads(report.read_text())["files"]) \
            if report.is_file() else None
        return found
    return {rel(p): _sha(p.read_bytes()) for p in files}


def temporaries(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if TEMPORARY.search(p.name))


def _run(cmd, env, log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "ab") as f:
        code = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    return code, time.perf_counter() - start


def _run_killed(cmd, env, log: Path, after_s: float) -> bool:
    """Start ``cmd`` and SIGKILL its process group after ``after_s``; True if it was still running."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=after_s)
            return False  # finished before the kill
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True


def _diff(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="gmnr-kill-"))
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", scratch / "params.yaml")
    ref = scratch / "ref"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}", PYTHONHASHSEED="0",
               GMNR_EXPERIMENT="gmnr-kill")
    import mlflow  # the experiment's artifacts in the scratch folder, not the project's mlartifacts/
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    if mlflow.get_experiment_by_name("gmnr-kill") is None:
        mlflow.create_experiment("gmnr-kill", artifact_location=(scratch / "mlartifacts").as_uri())
    needed = STAGES[:max(STAGES.index(s) for s in args.stages) + 1]
    results = []
    for stage in needed:
        log = scratch / f"{stage}.log"
        code, ref_s = _run(_command(stage, ref, ref), env, log)
        if code != 0:
            print(f"{stage}: the reference run failed (exit {code}); see {log}", file=sys.stderr)
            return 1
        if stage not in args.stages:
            continue
        reference = fingerprint(stage, ref)
        trial_dir = scratch / f"trial-{stage}"
        code, warm_s = _run(_command(stage, ref, trial_dir), env, log)
        if code != 0:
            print(f"{stage}: the uninterrupted trial run failed (exit {code}); see {log}", file=sys.stderr)
            return 1
        for k in range(args.trials):
            for attempt in range(5):
                at = rng.uniform(0.05, 0.95) * warm_s
                killed = _run_killed(_command(stage, ref, trial_dir), env, log, at)
                if killed:
                    break
            left_after_kill = temporaries(_outputs(stage, trial_dir))
            code, rerun_s = _run(_command(stage, ref, trial_dir), env, log)
            got = fingerprint(stage, trial_dir)
            row = {"stage": stage, "trial": k + 1, "reference_s": round(ref_s, 1), "trial_run_s": round(warm_s, 1),
                   "killed_at_s": round(at, 2), "killed": killed, "kill_attempts": attempt + 1, "temporaries_after_kill": len(left_after_kill), "rerun_exit": code,
                   "rerun_s": round(rerun_s, 1), "files_compared": len(reference),
                   "equal": code == 0 and got == reference, "differences": _diff(reference, got)[:10],
                   "leftovers": temporaries(_outputs(stage, trial_dir))}
            results.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| stage | kills | reruns exit 0 | equal to uninterrupted | leftover temporaries | uninterrupted s "
          "| kill moments s |")
    print("|---|--:|--:|--:|--:|--:|---|")
    for stage in args.stages:
        rows = [r for r in results if r["stage"] == stage]
        print(f"| {stage} | {sum(r['killed'] for r in rows)}/{len(rows)} | {sum(r['rerun_exit'] == 0 for r in rows)} | "
              f"{sum(r['equal'] for r in rows)} | {sum(len(r['leftovers']) for r in rows)} | {rows[0]['trial_run_s']} | "
              f"{', '.join(str(r['killed_at_s']) for r in rows)} |")
    # Temporaries anywhere else the stages write (reports, the feature cache under paths.runs).
    elsewhere = [t for t in temporaries(scratch) if not t.startswith(("ref/", "mlartifacts/"))
                 and not any(t.startswith(f"trial-{s}/") for s in args.stages)]
    print(f"\ntemporaries elsewhere in {scratch}: {elsewhere or 'none'}")
    if args.out:
        args.out.write_text(json.dumps({"trials": results, "temporaries_elsewhere": elsewhere}, indent=1) + "\n")
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(r["equal"] and not r["leftovers"] for r in results) and not elsewhere else 1


if __name__ == "__main__":
    sys.exit(main())
