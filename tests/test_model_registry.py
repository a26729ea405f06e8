"""A model is one spec (gmnr/models/registry.py): the trainer, the render stage and evaluation ask the
spec of ``params.model`` and never test a model's name.

The proof: a tiny model registered from this file alone (its networks, loss and spec below) trains,
renders and evaluates through the same functions the pipeline's stages call. And the registry is
the one source of what each model's training reads: dvc.yaml's train stages, Snakemake's rules,
the MLflow params of a run and the resume check agree with it."""
import contextlib
import json
import re

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from gmnr.models import registry
from tests.conftest import ROOT, make_disc_dataset

RES = 16


class TinyMapping(nn.Module):
    """z [B, 8] -> ws [B, 1, 8], with the keyword arguments every caller passes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=True):
        return torch.tanh(self.fc(z))[:, None]


class TinyGenerator(nn.Module):
    """An image from w alone, the same from every camera, at a constant depth: the least a 3D model
    must return (``image`` in [-1, 1], ``depth``) for videos and every metric to run."""
    z_dim = 8

    def __init__(self, depth: float):
        super().__init__()
        self.mapping = TinyMapping()
        self.to_image = nn.Linear(8, 3 * RES * RES)
        self.depth = depth

    def render(self, ws, cam2world, intrinsics=None, n_planes=None, noise_mode="const"):
        views = cam2world.shape[0] // ws.shape[0]
        image = torch.tanh(self.to_image(ws[:, 0])).view(-1, 3, RES, RES).repeat_interleave(views, 0)
        return {"image": image, "depth": torch.full_like(image[:, :1], self.depth)}

    def forward(self, z, cam2world, intrinsics=None, truncation_psi=1.0, n_planes=None, noise_mode="const"):
        return self.render(self.mapping(z), cam2world, intrinsics, n_planes, noise_mode)


class TinyLoss:
    """Non-saturating GAN loss with R1, on an unconditioned discriminator."""

    def __init__(self, G, D, r1_gamma):
        self.G, self.D, self.r1_gamma = G, D, r1_gamma
        self.steps_seen: list[int] = []

    def set_step(self, step, stage, fade):
        self.steps_seen.append(step)

    def augment_reals(self, images):
        return images

    def discriminator_loss(self, real, real_cam2world, z, fake_cam2world):
        with torch.no_grad():
            fake = self.G(z, fake_cam2world)["image"]
        loss = F.softplus(self.D(fake)).mean() + F.softplus(-self.D(real)).mean()
        return loss, {"loss_D": loss.detach()}

    def r1_loss(self, real, real_cam2world, interval):
        from gmnr.train.losses import r1_penalty
        return r1_penalty(lambda x: self.D(x).squeeze(1), real, self.r1_gamma, interval)

    def generator_loss(self, z, cam2world):
        loss = F.softplus(-self.D(self.G(z, cam2world)["image"])).mean()
        return loss, {"loss_G": loss.detach()}


def _tiny_spec() -> registry.ModelSpec:
    return registry.ModelSpec(
        name="tiny",
        summary="a test model: one image per latent at a constant depth",
        sections=(),  # no section of its own: it reads the common params and `train` only
        build_generator=lambda params: TinyGenerator(depth=float(params.camera().radius)),
        build_discriminator=lambda params: nn.Sequential(nn.Flatten(), nn.Linear(3 * RES * RES, 1)),
        build_loss=lambda params, ctx: TinyLoss(ctx.G, ctx.D, ctx.recipe.r1_gamma),
    )


@pytest.fixture
def tiny_model():
    spec = registry.register(_tiny_spec())
    yield spec
    registry.unregister("tiny")


def _params(*extra):
    from gmnr.config import load_params
    return load_params(overrides=["model=tiny", f"pack.resolution={RES}", "train.steps=3", "train.checkpoint_every=2",
                                  "train.sample_every=3", "train.log_every=1", "train.threads=1",
                                  "train.grid_latents=2", "train.grid_views=2", "train.views_per_latent=2",
                                  "train.r1_interval=2", "evaluate.fid_images=12", "evaluate.identity_pairs=2",
                                  "evaluate.geometry_images=2", "evaluate.speed_frames=2", "evaluate.speed_warmup=1",
                                  "evaluate.kid_subsets=10", "evaluate.with_init=false", *extra])


def test_a_model_registered_from_a_test_file_trains_renders_and_evaluates(tiny_model, tmp_path):
    from gmnr.eval.evaluate import evaluate
    from gmnr.stages import run_render
    from gmnr.train.checkpoint import load_checkpoint
    from gmnr.train.loop import finished_run, train
    make_disc_dataset(tmp_path, 12)
    params = _params(f"paths.runs={tmp_path / 'runs'}", f"paths.reports={tmp_path / 'reports'}")
    run = tmp_path / "runs" / "tiny"

    summary = train(params, tmp_path / "packed", run, progress=False)
    assert summary["step"] == 3 and (run / "final.pt").is_file() and (run / "samples" / "final.png").is_file()
    state = load_checkpoint(run / "final.pt")
    assert state["model"] == "tiny" and set(state["G_ema"]) == {"mapping.fc.weight", "mapping.fc.bias",
                                                                "to_image.weight", "to_image.bias"}
    assert finished_run(run, params, tmp_path / "packed")["step"] == 3  # a rerun with these params: nothing to do
    final_bytes = (run / "final.pt").read_bytes()
    assert train(params, tmp_path / "packed", run, progress=False)["step"] == 3
    assert (run / "final.pt").read_bytes() == final_bytes
    # its MLflow run logs the sections dvc.yaml lists for a train stage, less other models' (gmpi)
    from mlflow.tracking import MlflowClient
    client = MlflowClient()
    [logged] = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'train'")
    assert {k.split(".")[0] for k in logged.data.params} == {"dataset", "seed", "cameras", "pack", "train"}

    report = run_render(params, run / "final.pt", tmp_path / "render", progress=False)
    assert any(f.endswith("sweep.mp4") for f in report["files"]) and any("depth" in f for f in report["files"])

    evaluate(params, run / "final.pt", tmp_path / "packed", tmp_path / "tiny.json", progress=False)
    report = json.loads((tmp_path / "tiny.json").read_text())
    m = report["metrics"]
    assert m["n_generated"] == 12 and m["fid"] > 0 and m["fps"] > 0
    assert m["speed_planes"] is None  # no planes: the spec says so
    assert report["tags"]["model"] == "tiny"


def test_an_unregistered_model_is_refused_by_name_before_any_work():
    from gmnr.config import ParamsError, load_params
    with pytest.raises(ParamsError, match=r"'model'.*'gmpi', 'gmnr', 'mvcgan', 'stylegan2'.*got 'tiny'"):
        load_params(overrides=["model=tiny"])
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.get("gmpi"))


@pytest.mark.parametrize("name", ["gmpi", "gmnr", "mvcgan", "stylegan2"])
def test_every_built_in_model_satisfies_the_interfaces_the_trainer_calls(name, tmp_path):
    from gmnr.config import load_params
    from gmnr.train.curriculum import recipe_from_params
    from gmnr.train.losses import PosePrior
    small = ["gmpi.pretrained=null", "gmpi.z_dim=16", "gmpi.w_dim=16", "gmpi.mapping_layers=2",
             "gmpi.channel_base=256", "gmpi.channel_max=32", "gmpi.planes_train=4", "gmpi.planes_eval=4"]
    params = load_params(overrides=[f"model={name}", "pack.resolution=32", *small])
    spec = registry.get(name)
    G, D = spec.build_generator(params), spec.build_discriminator(params)
    assert isinstance(G, registry.Generator)
    assert isinstance(G, registry.MPIRenderer) == (name != "mvcgan")  # MVCGAN renders rays, not planes
    assert isinstance(G, registry.ViewDependentColour) == (name == "gmnr")
    cam = params.model_camera()
    ctx = registry.LossContext(G, D, PosePrior(cam.yaw_std, cam.pitch_std, cam.truncation, cam.radius,
                                               tuple(cam.center)), recipe_from_params(params),
                               contextlib.nullcontext, torch.device("cpu"))
    assert isinstance(spec.build_loss(params, ctx), registry.TrainingLoss)
    assert spec.has_viewpoint == (name != "stylegan2")
    assert (spec.pretrained(load_params(overrides=[f"model={name}"])) is None) == (name == "mvcgan")


def test_no_code_outside_the_model_specs_asks_which_model_it_has():
    """`model == ...` (and `!=`, `in (...)`) appears only in gmnr/models/specs/."""
    found = []
    for path in (ROOT / "gmnr").rglob("*.py"):
        if "specs" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bmodel\s*(==|!=|\bin\b\s*[(\[{])", line) and not line.lstrip().startswith("#"):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def _dvc_yaml_train_params():
    from gmnr.pipeline_spec import load_stages
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    return load_stages(ROOT / "dvc.yaml", {**config, "models": list(registry.BUILTIN)})


def test_each_models_params_come_from_its_spec_in_dvc_yaml_snakemake_mlflow_and_the_resume_check():
    from gmnr.config import load_params
    from gmnr.pipeline_spec import stage_sections
    from gmnr.train.loop import changed_training_params, model_sections
    stages = _dvc_yaml_train_params()
    for name in registry.BUILTIN:
        spec = registry.get(name)
        stage = stages[f"train@{name}"]
        # Snakemake's rule tracks exactly the spec's train params
        assert set(stage.params) == set(registry.train_params(name)), name
        # MLflow logs these sections with the run; the resume check compares them
        assert model_sections(name) == spec.sections
        sections = stage_sections(f"train@{name}", load_params(overrides=[f"model={name}"]))
        assert set(sections) == {"seed", "cameras", "pack", *spec.sections, "train"}, (name, sections)
        params = load_params(overrides=[f"model={name}"])
        for section, key in (("gmpi", "planes_train"), ("gmnr", "consistency_weight"), ("mvcgan", "r1_gamma")):
            recorded = params.model_dump(mode="json")  # a checkpoint's config, one knob of `section` apart
            recorded[section][key] = recorded[section][key] + 1
            changed = changed_training_params(recorded, params)
            assert changed == ([f"{section}.{key}"] if spec.reads(section) else []), (name, section, changed)
    assert "gmpi" not in stages["train@mvcgan"].params and "gmpi" in stages["train@gmnr"].params
    assert "gmnr" not in stages["train@gmpi"].params


def test_a_key_added_to_the_schema_after_a_checkpoint_is_no_difference_at_its_default():
    """A checkpoint written before a param existed does not record it: at the schema's default (what the code
    did before the key was added) the run resumes, and is found finished, instead of training afresh; any
    other value, or a recorded key that is missing now or changed, is a difference."""
    from gmnr.config import load_params
    from gmnr.train.loop import changed_training_params, schema_default
    params = load_params(overrides=["model=mvcgan"])
    older = params.model_dump(mode="json")
    del older["mvcgan"]["photometric_on"], older["mvcgan"]["r1_gamma"]
    assert schema_default("mvcgan.photometric_on") == "rgb" and schema_default("mvcgan.r1_gamma") == 0.2
    assert changed_training_params(older, params) == []
    assert changed_training_params(older, load_params(overrides=["model=mvcgan", "mvcgan.photometric_on=features",
                                                                 "mvcgan.r1_gamma=0.5"])) == [
        "mvcgan.photometric_on", "mvcgan.r1_gamma"]
    # keys without a default of their own (inside a dict of sections) are compared as recorded
    assert schema_default("mvcgan.cameras.ffhq.fov_deg") != 12.0
    no_camera = params.model_dump(mode="json")
    del no_camera["mvcgan"]["cameras"]["ffhq"]["fov_deg"]
    assert changed_training_params(no_camera, params) == ["mvcgan.cameras.ffhq.fov_deg"]


def test_snakemake_tracks_no_gmpi_knob_for_mvcgan_but_dvc_lists_gmpi_for_every_model():
    """What each engine can express: DVC one params list for every item of the train foreach
    (tests/test_pipeline.py changes a GMPI knob in a trained project and runs both)."""
    from dvc.repo import Repo
    with Repo(str(ROOT)) as repo:
        listed = {s.name: {k for d in s.deps if getattr(d, "params", None) for k in d.params}
                  for s in repo.index.stages if s.name and s.name.startswith("train@")}
    stages = _dvc_yaml_train_params()
    assert "gmpi" in listed["train@mvcgan"] and "gmpi" not in stages["train@mvcgan"].params


def test_the_demo_is_a_source_in_the_dataset_registry_not_a_branch():
    """Every dataset name has a source (gmnr.data.registry.source_of) that says what the stages need;
    the demo's is a synthetic one, and no code tests for the demo's name."""
    from gmnr.config import DatasetName, load_params
    from gmnr.data.registry import source_of
    for name in DatasetName.__args__:
        assert source_of(name).name == name
    demo = load_params(overrides=["dataset=demo", "synth.resolution=128", "pack.resolution=null"])
    assert demo.source().kind == "synth" and demo.training_resolution() == 128 == demo.aligned_resolution()
    assert demo.align_mode() == "off" and demo.pose_fit()[0] == demo.pose.look_at.shift_sigma_iod
    custom = load_params(overrides=["dataset=custom", "download.from_dir=/photos/x"])
    assert custom.source().kind == "folder" and custom.align_mode() == "ffhq" and custom.training_resolution() == 256
    assert custom.pose_fit()[0] == custom.pose.shift_sigma_iod  # FFHQ's crop after the align stage
    ffhq = load_params(overrides=["dataset=ffhq512"])
    assert ffhq.source().kind == "download" and ffhq.training_resolution() == 512 and ffhq.camera_family() == "ffhq"
    found = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "gmnr").rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"dataset\s*(==|!=)\s*[\"']demo[\"']", line)]
    assert not found, found


def test_a_finished_run_on_data_that_has_changed_since_trains_afresh(tiny_model, tmp_path):
    """The same params on other packed data (new poses, new crops) is another run: not 'nothing to do',
    not a resume from the old data's checkpoints."""
    import numpy as np

    from gmnr.data.images import read_rgb, write_png_atomic
    from gmnr.train.loop import finished_run, train
    make_disc_dataset(tmp_path, 12)
    params = _params(f"paths.runs={tmp_path / 'runs'}", f"paths.reports={tmp_path / 'reports'}")
    run, packed = tmp_path / "runs" / "tiny", tmp_path / "packed"
    train(params, packed, run, progress=False)
    image = next((packed / "images").glob("*.png"))
    write_png_atomic(image, 255 - read_rgb(image).astype(np.uint8))  # one image changes, names and poses do not
    assert finished_run(run, params, packed) is None
    again = train(params, packed, run, progress=False)
    assert again["step"] == 3 and again["resumed_from"] == ""  # trained from the start, not resumed
    assert list((run / "checkpoints").glob("stale-*")), "the old data's checkpoints are moved aside, not deleted"
