"""`dataset: custom`: any folder (or archive) of photos becomes a dataset of its own name, and input with
nothing usable fails at once, naming the folder and what was searched, with nothing written.

The slow test runs the one command (`snakemake --cores 2 --config dataset=custom 'download={from_dir:
PATH}'`, with the smallest sizes) on a folder of in-the-wild photos, in a copy of the finished small
demo, and checks the custom dataset's row in the table and that the demo's outputs and rows kept their
bytes."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from gmnr import config, experiment
from gmnr.data.images import write_png_atomic
from gmnr.pipeline_spec import load_stages
from tests.conftest import ROOT, copy_project, env_with_venv, run_cli


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("folder, name", [
    ("/data/Holiday Photos 2024/", "holiday-photos-2024"),
    ("~/faces.tar.gz", "faces"),
    ("/x/ffhq256", "custom-ffhq256"),      # a built-in dataset's name: prefixed, never its folders
    ("/x/.../", "custom"),                 # nothing usable left
    (None, "custom"),
])
def test_a_custom_dataset_is_named_after_its_folder(folder, name):
    assert config.derive_custom_name(folder) == name
    assert len(config.derive_custom_name("/x/" + "a" * 80)) == 40


def test_custom_name_must_be_a_safe_slug_of_a_custom_dataset():
    ok = config.load_params(overrides=["dataset=custom", "custom_name=my_faces-2"])
    assert ok.dataset_name() == "my_faces-2" and ok.camera_family() == "ffhq" and ok.align_mode() == "ffhq"
    for bad, why in (("../up", "custom_name"), ("Caps", "custom_name"), ("demo", "built-in dataset"),
                     ("a b", "custom_name")):
        with pytest.raises(config.ParamsError, match=why):
            config.load_params(overrides=["dataset=custom", f"custom_name={json.dumps(bad)}"])
    with pytest.raises(config.ParamsError, match="custom_name .* names a custom dataset, but dataset is 'demo'"):
        config.load_params(overrides=["custom_name=mine"])


def test_the_registry_says_which_datasets_are_aligned():
    for dataset in ("demo", "ffhq256", "afhqcat", "metfaces"):
        assert config.load_params(overrides=[f"dataset={dataset}"]).align_mode() == "off"
    custom = config.load_params(overrides=["dataset=custom"])
    assert custom.align_mode() == "ffhq" and custom.aligned_resolution() == 256
    assert config.load_params(overrides=["dataset=custom", "align.mode=off"]).align_mode() == "off"  # YAML's off


def _plan(overrides):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return experiment.plan_stages(ROOT / "dvc.yaml", raw, overrides)


def test_two_custom_folders_never_share_a_path_and_the_demo_keeps_its_own():
    """The plan Snakemake runs for `--config dataset=custom 'download={from_dir: ...}'`: every output of
    every stage under the folder's name, none shared between two folders or with the demo."""
    demo = _plan([])
    a = _plan(["dataset=custom", "download.from_dir=/photos/holiday"])
    b = _plan(["dataset=custom", "download.from_dir=/photos/Wedding"])
    c = _plan(["dataset=custom", "download.from_dir=/photos/holiday", "custom_name=mine"])

    def outs(plan):
        return {p for name, s in plan.items() if name != "compare" for p in s.outs + s.metrics + s.persistent}

    assert all("/holiday" in p for p in outs(a)), outs(a)
    assert all("/wedding" in p for p in outs(b)) and all("/mine" in p for p in outs(c))
    assert not outs(a) & outs(b) and not outs(a) & outs(c) and not outs(a) & outs(demo)
    assert "data/aligned/holiday" in a["align"].outs and "reports/holiday/align.json" in a["align"].metrics
    assert a["pose"].deps[-1] == "data/aligned/holiday"  # pose reads the aligned crops
    assert "-S download.from_dir=/photos/holiday" in a["train@gmpi"].command(
        ["dataset=custom", "download.from_dir=/photos/holiday"])  # every stage finds the name again


def test_dvc_yaml_templating_runs_a_custom_dataset(tmp_path):
    """What `dvc exp run -S dataset=custom -S download.from_dir=PATH` interpolates: DVC reads dvc.yaml
    with params.yaml's values, the stages resolve (align between landmarks and pose), and gmnr's own
    default paths for those params are the ones DVC names (params.yaml's own custom dataset keeps the
    folders dvc.yaml names, `custom`), while the MLflow tag and table rows use the folder's name."""
    root = copy_project(tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dataset"] = "custom"
    params["download"]["from_dir"] = str(tmp_path / "My Photos")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run(["dvc", "stage", "list"], cwd=root, capture_output=True, text=True, env=env_with_venv(),
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    listed = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "data/aligned/custom" in listed["align"] and "reports/custom/align.json" in listed["align"]
    assert "data/processed/custom" in listed["pack"] and "runs/custom/gmpi/final.pt" in listed["train@gmpi"]
    resolved = config.resolve(params)
    stages = load_stages(root / "dvc.yaml", resolved.model_dump(mode="json"))
    layout = experiment.Layout.of(resolved, resolved)
    assert str(layout.raw_dir()) in stages["source"].outs and str(layout.aligned_dir()) in stages["align"].outs
    assert str(layout.processed_dir()) in stages["pack"].outs
    assert resolved.dataset_name() == "my-photos"


# ------------------------------------------------------------------ fail fast
def test_an_empty_folder_fails_at_the_source_naming_it_and_the_patterns(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not a photo")
    out = tmp_path / "raw"
    done = run_cli("source", "-S", "dataset=custom", "--from", str(empty), "--output", str(out),
                   "--reports", str(tmp_path / "reports"), "--downloads", str(tmp_path / "dl"), "--no-progress",
                   env=env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert done.returncode == 2, done.stderr
    assert str(empty) in done.stderr and "png/jpg/jpeg/webp" in done.stderr, done.stderr
    assert not out.exists() and not (tmp_path / "reports").exists()


def test_a_folder_without_faces_fails_at_landmarks_naming_it_and_the_patterns(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):  # noise and a flat grey: images, but no face
        write_png_atomic(tmp_path / "photos" / "images" / f"{i}.png",
                         rng.integers(0, 255, (120, 90, 3)).astype(np.uint8) if i else np.full((80, 80, 3), 128, np.uint8))
    out = tmp_path / "interim"
    done = run_cli("landmarks", "-S", "dataset=custom", "--input", str(tmp_path / "photos"), "--output", str(out),
                   "--reports", str(tmp_path / "reports"), "--no-progress",
                   env=env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "no face found in any of the 3 images" in line and str(tmp_path / "photos") in line and "*.png" in line
    assert "no_face: 3" in line, line
    assert not (out / "landmarks.csv").exists() and not (out / "detections").exists()
    assert not (tmp_path / "reports" / "landmarks.json").exists()


def test_align_with_no_face_to_align_fails_and_writes_nothing(tmp_path):
    import pandas as pd

    from gmnr.preprocess.landmarks import COLUMNS
    (tmp_path / "raw" / "images").mkdir(parents=True)
    pd.DataFrame([{"file": "a.png", "status": "no_face"}], columns=COLUMNS).to_csv(tmp_path / "landmarks.csv",
                                                                                  index=False)
    done = run_cli("align", "-S", "dataset=custom", "--input", str(tmp_path / "raw"), "--landmarks",
                   str(tmp_path / "landmarks.csv"), "--output", str(tmp_path / "aligned"), "--reports",
                   str(tmp_path / "reports"), "--no-progress",
                   env=env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert done.returncode == 2 and "has no face to align" in done.stderr and "no_face: 1" in done.stderr
    assert str(tmp_path / "raw") in done.stderr and "*.png" in done.stderr
    assert not (tmp_path / "aligned").exists() and not (tmp_path / "reports").exists()


def test_the_one_command_on_an_empty_folder_fails_before_any_output(tmp_path):
    root = copy_project(tmp_path / "project")
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--config", "dataset=custom",
                           f"download={{from_dir: {tmp_path / 'empty'}}}"], cwd=root, capture_output=True, text=True,
                          env=env_with_venv(), timeout=600)
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert f"--from {tmp_path / 'empty'}: no images (png/jpg/jpeg/webp" in log, log[-3000:]
    # Snakemake may have made the outputs' parent folders; no file is written
    assert not [p for p in (root / "data").rglob("*") if p.is_file()] if (root / "data").exists() else True
    assert not (root / "reports" / "empty").exists() or not any((root / "reports" / "empty").rglob("*.json"))


# ------------------------------------------------------------------ the one command, end to end
SMALL = [  # the smallest sizes the params allow, as tests/conftest.py use_small_demo gives the demo
    "models=[gmpi]", "align={resolution: 64}", "pack={resolution: 64}",
    "gmpi={pretrained: demo64, z_dim: 128, w_dim: 128, mapping_layers: 2, channel_base: 2048, channel_max: 64, "
    "planes_train: 4, planes_eval: 4, alpha_max_res: 64}",
    "train={steps: 4, batch_per_gpu: 8, lr_g: 0.0001, lr_d: 0.0001, r1_gamma: 1.0, r1_interval: 4, "
    "views_per_latent: 2, checkpoint_every: 2, sample_every: 2, log_every: 1, grid_latents: 2, grid_views: 2}",
    "render={seeds: 2, frames: 4}",
    "evaluate={fid_images: 16, identity_pairs: 2, geometry_images: 2, speed_frames: 2, speed_warmup: 1, "
    "with_init: false}",
]


def _digests(root, *folders) -> dict[str, str]:
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((root / folder).rglob("*")) if p.is_file()}


def _rows(root) -> list[str]:
    return [ln for ln in (root / "results" / "table.md").read_text().splitlines() if ln.startswith("| ")][2:]


@pytest.mark.slow
def test_one_command_from_a_folder_of_photos_to_a_row_of_its_own(demo_project, tmp_path):
    import shutil

    from tests.wild_faces import make_heads, paste_in_the_wild
    root = tmp_path / "project"
    shutil.copytree(demo_project, root, symlinks=True)
    truth = make_heads(tmp_path / "heads", 12, 128, seed=5)
    paste_in_the_wild(tmp_path / "heads", truth, tmp_path / "My Photos", seed=2)
    (tmp_path / "My Photos" / "images" / "notes.txt").write_text("not a photo")  # ignored: not an image
    demo_files = ("data/raw/demo", "data/interim/demo", "data/aligned/demo", "data/processed/demo", "reports/demo",
                  "runs/demo")
    before, demo_rows = _digests(root, *demo_files), [r for r in _rows(root) if r.startswith("| demo ")]
    assert demo_rows and any(p.startswith("reports/demo/") for p in before)

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--config", "dataset=custom",
                           f"download={{from_dir: {tmp_path / 'My Photos'}}}", *SMALL], cwd=root,
                          capture_output=True, text=True, env=env_with_venv(), timeout=1800)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    name = "my-photos"
    # the folder's name heads every path; the small sizes given with --config are what this run differs in
    # from params.yaml, so the stages from align on add them (gmnr.experiment): my-photos+align.resolution=64
    reports = {p.stem: json.loads(p.read_text()) for p in sorted((root / "reports").glob(f"{name}*/*.json"))}
    source, align, pose, pack = (reports[s] for s in ("source", "align", "pose", "pack"))
    print(f"\none command on 12 photos: {seconds:.1f} s; aligned {align['aligned']}/{align['images_total']}, "
          f"poses {pose['poses_ok']}, packed {pack['images_packed']}")
    assert source["dataset"] == name and source["copied"] == 12
    assert (root / "reports" / name / "source.json").is_file() and (root / "data" / "raw" / name).is_dir()
    assert align["mode"] == "ffhq" and align["aligned"] >= 10, align
    assert pack["images_packed"] >= 9 and pack["resolution"] == 64
    assert list((root / "data" / "aligned").glob(f"{name}*/landmarks.csv"))
    assert list((root / "runs").glob(f"{name}*/gmpi*/final.pt"))
    folders = {p.name for top in ("data/raw", "data/interim", "data/aligned", "data/processed", "reports", "runs")
               for p in (root / top).glob("*")}
    assert all(f == "demo" or f.split("+")[0] == name for f in folders), folders  # nothing named `custom`
    rows = _rows(root)
    ours = [r for r in rows if r.split("|")[1].strip().split("+")[0] == name]
    assert len(ours) == 1 and ours[0].split("|")[2].strip() == "gmpi", rows
    # the demo: every file and every row as they were
    assert _digests(root, *demo_files) == before
    assert [r for r in rows if r.startswith("| demo ")] == demo_rows
