"""The pipeline on a real SLURM cluster (tests/slurm_cluster.py: one node, slurmdbd accounting).

`snakemake --profile workflow/profiles/slurm` runs the small demo (the size of the pipeline tests)
with every rule submitted as a SLURM job by snakemake-executor-plugin-slurm; `sacct` must show one
completed job per rule with what its dvc.yaml stage's meta.snakemake asks for, `train.gpus` as a
GPU request, and the results must equal the local run of tests/conftest.py's demo_project. Then the
multi-node recipe: one sbatch whose two tasks start two torchrun launchers
(workflow/profiles/slurm/train-multinode.sbatch), against one process with the same total batch.

Needs root and Debian's slurm-wlm, slurmdbd, munge and mariadb-server (`make test` installs them
with `make slurm`): where a package is missing these tests fail, naming it; without root they are
skipped, saying so. Marked `slurm` (and `slow`): in `make test` they share demo_project (the local
reference) with the pipeline tests; `make test-slurm` runs them alone."""
import json
import os
import re
import subprocess
import sys
import time
import warnings

import pytest
import torch
import yaml

from gmnr import config
from tests.conftest import ROOT, env_with_venv, use_small_demo
from tests.test_dvc_remote import measured
from tests.slurm_cluster import ACCOUNTS, SlurmCluster, missing_requirements
from tests.test_multinode import TOTAL_BATCH, assert_matches_one_process, free_port, one_process_run, train_cmd

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
TRAIN_GPUS = 1  # train.gpus for the SLURM run: one GPU asked per training job, still one process
PROFILE_ACCOUNT = ACCOUNTS[1]  # what the profile is edited to charge: not the user's default account
SACCT_FIELDS = ("JobID", "JobName", "Comment", "Partition", "Account", "ReqTRES", "AllocTRES", "State",
                "ExitCode", "Elapsed")


def _dvc_yaml_max_mem() -> int:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    metas = [(s.get("do") or s).get("meta", {}).get("snakemake", {}) for s in stages.values()]
    return max(int(m.get("resources", {}).get("mem_mb", 0)) for m in metas)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        message = ("NOT RUN: the SLURM tests need root (slurmd starts jobs as their user); "
                   "run the suite as root to test the SLURM profile and the multi-node recipe")
        warnings.warn(message)
        pytest.skip(message)
    reason = missing_requirements()
    if reason:
        pytest.fail(reason)
    # the node has this machine's cores and memory (at least what the largest stage asks for) and
    # two GPUs without hardware, so a GPU request is scheduled and accounted
    start = time.perf_counter()
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), gpus=2, min_memory_mb=_dvc_yaml_max_mem()) as running:
        print(f"\nSLURM cluster up in {time.perf_counter() - start:.1f} s")
        yield running


# `python -m snakemake`, except that the SLURM plugin polls every 2 s throughout. The plugin (2.8.0) adds 10 s to
# its interval after every check that finds no job finished, so on a test cluster whose 14 jobs take 10-40 s each
# the run waited about 15 s per job for nothing (the SLURM run took 473 s against the local run's 233 s). What is
# tested (every rule a SLURM job, what sacct records, the outputs) does not depend on the polling cadence.
STEADY_POLLING_SNAKEMAKE = """
import sys
import snakemake_executor_plugin_slurm as slurm
from snakemake.cli import main
slurm.Executor.next_seconds_between_status_checks = property(lambda self: 2, lambda self, value: None)
sys.argv[0] = "snakemake"
main()
"""


def _clone_as_first_copied(local, dest):
    """The local run's project as it was copied (its first commit), not the working tree now: both
    runs read the same code and params.yaml even while the project changes under the tests."""
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=local, capture_output=True,
                           text=True, check=True).stdout.split()[0]
    subprocess.run(["git", "clone", "-q", str(local), str(dest)], check=True)
    subprocess.run(["git", "checkout", "-q", "-B", "slurm", first], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="module")
def slurm_run(cluster, demo_project, tmp_path_factory):
    """The small demo through `snakemake --profile workflow/profiles/slurm` in its own copy of the
    project, with the edits a user makes: the account in the profile, `train.gpus` in params.yaml."""
    root = _clone_as_first_copied(demo_project, tmp_path_factory.mktemp("slurm") / "project")
    use_small_demo(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["gpus"] = TRAIN_GPUS  # set where a user sets it, so DVC records the run as the project's
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    profile = root / "workflow" / "profiles" / "slurm" / "config.yaml"
    text = profile.read_text()
    assert '# slurm_account: "my_account"' in text, "the profile names the account setting a user edits"
    profile.write_text(text.replace('# slurm_account: "my_account"', f'slurm_account: "{PROFILE_ACCOUNT}"'))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", STEADY_POLLING_SNAKEMAKE, "--profile", "workflow/profiles/slurm",
                           # a test cluster answers at once: poll it every 2 s at first, not every 40 s
                           "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"],
                          cwd=root, env=cluster.env(env_with_venv()), capture_output=True, text=True, timeout=3000)
    seconds = time.perf_counter() - start
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:] + "\n" + cluster.logs_tail()
    print(f"\nsnakemake --profile workflow/profiles/slurm: {seconds:.1f} s")
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    return root, run_id, log


def _expected_jobs(root) -> dict[str, dict]:
    """Rule name -> (threads, mem_mb, gpu) from dvc.yaml's meta.snakemake, read with plain YAML:
    one rule per stage, one per item of a foreach stage."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    # A `${section.key}` in meta is the run's value: params.yaml with the demo section applied.
    resolved = config.load_params(root / "params.yaml").model_dump(mode="json")

    def value(v):
        if not isinstance(v, str):
            return v
        key = re.fullmatch(r"\$\{([\w.]+)\}", v)
        assert key, f"meta value {v!r}: this test knows only plain ${{section.key}} references"
        out = resolved
        for part in key.group(1).split("."):
            out = out[part]
        return out

    expected = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            key = re.fullmatch(r"\$\{(\w+)\}", stage["foreach"]).group(1)
            items = list(params.get(key) or [])
            body = stage["do"]
        else:
            items, body = [None], stage
        meta = body.get("meta", {}).get("snakemake", {})
        resources = meta.get("resources", {})
        gpu = value(resources.get("gpu", 0))
        for item in items:  # Snakemake's rule names: '@' and every other character but [A-Za-z0-9_] -> '_'
            rule = re.sub(r"[^A-Za-z0-9_]", "_", name if item is None else f"{name}@{item}")
            expected[rule] = {"cpu": int(value(meta.get("threads", 1))), "mem_mb": int(resources.get("mem_mb", 0)),
                              "gpu": int(gpu)}
    return expected


def _tres(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


def test_every_rule_ran_as_a_slurm_job_with_what_dvc_yaml_asks_for(cluster, slurm_run):
    root, run_id, _ = slurm_run
    jobs = [j for j in cluster.sacct(*SACCT_FIELDS) if j["JobName"] == run_id]
    print("\nsacct (jobs of this snakemake run):")
    for j in jobs:
        print("  " + " | ".join(f"{j[f]}" for f in SACCT_FIELDS if f != "JobName"))
    expected = _expected_jobs(root)
    by_rule: dict[str, list] = {}
    for j in jobs:
        by_rule.setdefault(j["Comment"].removeprefix("rule_"), []).append(j)
    assert set(by_rule) == set(expected), f"rules run as jobs {sorted(by_rule)}, dvc.yaml's {sorted(expected)}"
    for rule, want in expected.items():
        assert len(by_rule[rule]) == 1, f"{rule}: {len(by_rule[rule])} jobs (a retry?) {by_rule[rule]}"
        job = by_rule[rule][0]
        assert (job["State"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
        req, alloc = _tres(job["ReqTRES"]), _tres(job["AllocTRES"])
        assert req["cpu"] == str(want["cpu"]) and req["mem"] == f"{want['mem_mb']}M", (rule, want, job)
        assert req.get("gres/gpu", "0") == str(want["gpu"]), (rule, want, job)  # train.gpus -> --gpus
        assert alloc.get("gres/gpu", "0") == str(want["gpu"]), (rule, want, job)
        # partitions.yaml: jobs asking for GPUs go to the partition with GPUs, the others to `cpu`
        assert job["Partition"] == ("gpu" if want["gpu"] else "cpu"), (rule, job)
        assert job["Account"] == PROFILE_ACCOUNT, (rule, job)  # the profile's edited account, not the default


def test_slurm_results_equal_the_local_run(slurm_run, demo_project):
    """Every DVC-cached output hashes the same in both dvc.lock files but the final checkpoints
    (they hold their MLflow run id and train.gpus, so their weights are compared instead), the
    evaluations agree in every metric but timings, and DVC takes the SLURM run as up to date."""
    from dvc.repo import Repo

    slurm, _, _ = slurm_run
    with Repo(str(slurm)) as repo:
        cached = {str(o.def_path) for s in repo.index.stages for o in s.outs if o.use_cache}
    final = {p for p in cached if p.endswith("/final.pt")}
    locks = [yaml.safe_load((p / "dvc.lock").read_text())["stages"] for p in (slurm, demo_project)]
    hashes = [{o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", []) if o["path"] in cached}
              for lock in locks]
    compared = sorted(cached - final)
    assert set(hashes[0]) == set(hashes[1]) == cached, "every cached output is in both dvc.lock files"
    differ = [p for p in compared if hashes[0][p] != hashes[1][p]]
    assert not differ, f"outputs that differ between the SLURM and the local run: {differ}"
    print(f"\nsame dvc.lock hashes in both runs: {', '.join(compared)}")
    for path in sorted(final):
        a, b = (torch.load(p / path, weights_only=True) for p in (slurm, demo_project))
        for key in ("G_ema", "D"):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"{path} {key} differs"
        assert a["config"]["train"]["gpus"] == TRAIN_GPUS and b["config"]["train"]["gpus"] == 0
    for path in sorted(slurm.glob("reports/demo/evaluate/*.json")):
        a, b = (json.loads((p / path.relative_to(slurm)).read_text()) for p in (slurm, demo_project))
        assert measured(a) == measured(b), path.name
    done = subprocess.run(["dvc", "status"], cwd=slurm, env=env_with_venv(), capture_output=True, text=True)
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr


def test_one_sbatch_with_two_tasks_trains_as_two_nodes_like_one_process(cluster, tmp_path_factory):
    """The README's cluster recipe on the test cluster: two tasks on its one node stand in for two
    nodes, each starting one torchrun launcher with one Gloo process."""
    root = one_process_run(tmp_path_factory)
    out = root / "sbatch-two-nodes"
    script = ROOT / "workflow" / "profiles" / "slurm" / "train-multinode.sbatch"
    args = train_cmd(root / "packed", out, "-S", f"train.batch_per_gpu={TOTAL_BATCH // 2}")[4:]  # after `-m gmnr train`
    env = cluster.env(env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow-sbatch.db'}",
                                    MASTER_PORT=str(free_port()), GMNR_PROCS_PER_NODE="1"))
    start = time.perf_counter()
    # the script's #SBATCH lines are for a GPU cluster; options on the command line override them
    done = subprocess.run(["sbatch", "--wait", "--parsable", "--partition=cpu", "--nodes=1", "--ntasks=2",
                           "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=4000",
                           f"--output={root / 'sbatch-%j.out'}", str(script), *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    job = done.stdout.strip().split(";")[0]
    log = next(root.glob(f"sbatch-{job}.out"), None)
    assert done.returncode == 0, done.stderr + (log.read_text()[-3000:] if log else "") + cluster.logs_tail()
    print(f"\nsbatch with two tasks: {time.perf_counter() - start:.1f} s (job {job})")
    steps = cluster.run("sacct", "-j", job, "-P", "-n", "-o", "JobID,JobName,NTasks,State,ExitCode").stdout
    print(steps)
    step = [line.split("|") for line in steps.splitlines() if line.startswith(f"{job}.0|")]
    assert step and step[0][2:] == ["2", "COMPLETED", "0:0"], steps  # one srun step of two tasks
    summary = json.loads((out / "train.json").read_text())
    assert (summary["world_size"], summary["batch_per_gpu"], summary["step"]) == (2, TOTAL_BATCH // 2, 3), summary
    assert_matches_one_process(root / "one", out, "sbatch, 2 tasks")
