"""Training harness end to end on CPU: resume after SIGKILL is bitwise, and two Gloo processes
match one process with the same total batch."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, env_with_venv, make_disc_dataset

TINY = ["-S", "pack.resolution=16", "-S", "gmpi.pretrained=null",
        "-S", "gmpi.z_dim=16", "-S", "gmpi.w_dim=16", "-S", "gmpi.mapping_layers=2",
        "-S", "gmpi.channel_base=256", "-S", "gmpi.channel_max=32", "-S", "gmpi.planes_train=4",
        "-S", "gmpi.planes_eval=4", "-S", "train.log_every=1", "-S", "train.grid_latents=2",
        "-S", "train.grid_views=2", "-S", "train.threads=1", "-S", "train.views_per_latent=2",
        "-S", "train.r1_interval=2"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A small packed set of coloured discs with known cameras (what `gmnr pack` writes)."""
    root = tmp_path_factory.mktemp("train")
    make_disc_dataset(root, 12)
    return root


def _train_cmd(packed, out, *extra):
    return [sys.executable, "-m", "gmnr", "train", "--no-progress", "--input", str(packed / "packed"),
            "--output", str(out), *TINY, *extra]


def _env(packed):
    return env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{packed / 'mlflow.db'}")


def _weights(run_dir, key="G"):
    from gmnr.train.checkpoint import latest_checkpoint, load_checkpoint
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))[key]


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(packed):
    args = ["-S", "train.steps=8", "-S", "train.checkpoint_every=2", "-S", "train.sample_every=4"]
    straight = packed / "straight"
    done = subprocess.run(_train_cmd(packed, straight, *args), env=_env(packed), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = packed / "killed"
    proc = subprocess.Popen(_train_cmd(packed, killed, *args), env=_env(packed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "step-000000002.pt").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_saved = sorted(p.name for p in (killed / "checkpoints").glob("step-*.pt"))
    assert steps_saved and "step-000000008.pt" not in steps_saved, "the kill must land mid-run"
    assert not (killed / "final.pt").exists()

    done = subprocess.run(_train_cmd(packed, killed, *args), env=_env(packed), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"resumed_from":' in done.stdout and "step-0000000" in done.stdout
    for key in ("G", "D", "G_ema"):
        a, b = _weights(straight, key), _weights(killed, key)
        assert a.keys() == b.keys()
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, f"{key}: {diff[:5]} differ after resume"
    final_a = torch.load(straight / "final.pt", weights_only=True)["G_ema"]
    final_b = torch.load(killed / "final.pt", weights_only=True)["G_ema"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_two_gloo_processes_match_one_process_with_the_same_total_batch(packed):
    """Same total batch (2 x 2 vs 1 x 4) and the same samples. Minibatch-std groups depend on how
    the batch is split across processes, and random noise inputs are drawn per process, so both
    are switched off here. What remains is float32 summation order in the gradient all-reduce
    (about 1e-7 relative). Adam's first steps are close to lr * sign(g), so that noise can only
    change the step of weights whose gradient is almost zero: no weight may differ by more than
    a quarter of one step (lr / 4 = 5e-4), and on average the difference must be under 1% of
    how far training moved the weights."""
    common = ["-S", "train.steps=3", "-S", "train.checkpoint_every=3", "-S", "train.sample_every=3",
              "-S", "train.noise_mode=const", "-S", "gmpi.mbstd_group_size=1"]
    one = subprocess.run(_train_cmd(packed, packed / "one", *common, "-S", "train.batch_per_gpu=4"),
                         env=_env(packed), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(_train_cmd(packed, packed / "two", *common, "-S", "train.batch_per_gpu=2", "--gpus", "2"),
                         env=_env(packed), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    for key in ("G", "D"):
        a, b = _weights(packed / "one", key), _weights(packed / "two", key)
        floats = [k for k in a if a[k].is_floating_point()]
        worst = max((a[k] - b[k]).abs().max().item() for k in floats)
        diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in floats]).mean().item()
        if key == "G":
            moved = torch.cat([(a[k] - INITIAL[k]).abs().flatten() for k in floats if k in INITIAL]).mean().item()
            print(f"\nG: max |1 proc - 2 procs| {worst:.2e}, mean {diff:.2e}, mean movement {moved:.2e}")
            assert moved > 1e-4, "training must move the weights for the comparison to mean anything"
            assert diff < 0.01 * moved
        else:
            print(f"D: max |1 proc - 2 procs| {worst:.2e}, mean {diff:.2e}")
        assert worst <= 5e-4


INITIAL: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _initial_weights():
    """The generator's initial weights under the same params (seeded): to show training moved them."""
    from gmnr.config import load_params
    from gmnr.models.factory import build_generator
    params = load_params(ROOT / "params.yaml", [t for t in TINY if t != "-S"])
    torch.manual_seed(params.seed)
    INITIAL.update(build_generator(params).state_dict())


def test_a_run_of_other_params_is_moved_aside_and_an_extended_run_resumes(packed):
    """The pipeline reruns train when a param changes; the persisted checkpoints of the old params
    must not be resumed as if they were this run's. Raising train.steps does resume."""
    out = packed / "params-change"
    base = ["-S", "train.steps=2", "-S", "train.checkpoint_every=2", "-S", "train.sample_every=2"]
    done = subprocess.run(_train_cmd(packed, out, *base), env=_env(packed), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first = _weights(out)
    done = subprocess.run(_train_cmd(packed, out, *base, "-S", "train.r1_gamma=0.5"), env=_env(packed),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "holds a run of other params (train.r1_gamma)" in done.stdout and '"resumed_from": ""' in done.stdout
    stale = list((out / "checkpoints").glob("stale-*/step-000000002.pt"))
    assert len(stale) == 1 and all(torch.equal(v, torch.load(stale[0], weights_only=True)["G"][k])
                                   for k, v in first.items()), "the old run's checkpoint is kept, unchanged"
    done = subprocess.run(_train_cmd(packed, out, "-S", "train.steps=3", "-S", "train.checkpoint_every=2",
                                     "-S", "train.sample_every=2", "-S", "train.r1_gamma=0.5"),
                          env=_env(packed), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step-000000002.pt" in done.stdout.split('"resumed_from":')[1].split("\n")[0]


def _train(packed, out, *args):
    done = subprocess.run(_train_cmd(packed, out, *args), env=_env(packed), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _final(run_dir):
    return torch.load(run_dir / "final.pt", map_location="cpu", weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lowering_train_steps_below_a_finished_run_starts_afresh_and_labels_final_truly(packed):
    """A finished 4-step run, then train.steps 2 on the same folder: the longer run's checkpoints are
    moved aside, unchanged, and final.pt is a 2-step run's (as a fresh 2-step run makes it), never the
    4-step weights labelled with 2 steps."""
    every = ["-S", "train.checkpoint_every=2", "-S", "train.sample_every=2"]
    out = packed / "lowered"
    _train(packed, out, "-S", "train.steps=4", *every)
    longer = _final(out)
    assert longer["step"] == 4
    done = _train(packed, out, "-S", "train.steps=2", *every)
    assert "holds a run past train.steps (step 4, train.steps is now 2)" in done.stdout, done.stdout[-2000:]
    assert '"resumed_from": ""' in done.stdout
    [stale] = (out / "checkpoints").glob("stale-*")
    assert sorted(p.name for p in stale.glob("step-*.pt")) == ["step-000000002.pt", "step-000000004.pt"]
    assert _same_weights(torch.load(stale / "step-000000004.pt", weights_only=True)["G_ema"], longer["G_ema"])
    final = _final(out)
    assert final["step"] == 2 and final["config"]["train"]["steps"] == 2
    _train(packed, packed / "fresh-2", "-S", "train.steps=2", *every)
    assert _same_weights(final["G_ema"], _final(packed / "fresh-2")["G_ema"])
    assert not _same_weights(final["G_ema"], longer["G_ema"])


def test_a_second_train_on_a_folder_in_use_is_refused_and_the_first_finishes_intact(packed):
    """Two trains on one run folder at once: the second (other params) is refused in one line naming the
    folder, before it reads, moves or prunes anything; the first ends as an uninterrupted run does."""
    args = ["-S", "train.steps=6", "-S", "train.checkpoint_every=2", "-S", "train.sample_every=2"]
    out = packed / "shared-folder"
    first = subprocess.Popen(_train_cmd(packed, out, *args), env=_env(packed), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "checkpoints" / "step-000000002.pt").exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGSTOP)  # mid-run, holding the folder: the second must meet it there
        before = sorted(p.name for p in (out / "checkpoints").iterdir())
        started = time.perf_counter()
        second = subprocess.run(_train_cmd(packed, out, *args, "-S", "train.r1_gamma=0.5"), env=_env(packed),
                                capture_output=True, text=True, timeout=300)
        refused_in = time.perf_counter() - started
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing moved or pruned
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=600)
    print(f"\nsecond train refused after {refused_in:.1f} s")
    assert second.returncode == 2, second.stderr[-2000:]
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith("gmnr train: error: another gmnr train is writing") and str(out) in line, line
    assert f"by process {first.pid}" in line
    assert first.returncode == 0, stderr[-3000:]
    assert not list((out / "checkpoints").glob("stale-*")), "the first run's checkpoints were moved aside"
    assert _final(out)["step"] == 6
    _train(packed, packed / "uninterrupted-6", *args)
    assert _same_weights(_final(out)["G_ema"], _final(packed / "uninterrupted-6")["G_ema"])
