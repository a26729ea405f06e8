"""Curricula: stage lookup, fade-in and params; a real two-stage MVCGAN run switches at the given
step, and a run stopped after the switch resumes into the second stage and ends bitwise equal to an
uninterrupted run."""
import json

import pytest
import torch

from gmnr.config import ParamsError, load_params
from gmnr.train.curriculum import Curriculum, Phase, curriculum_from_params, recipe_from_params
from tests.conftest import make_disc_dataset

SWITCH = 2
STAGES = (f"[{{start: 0, resolution: 8, ray_resolution: 4, batch_per_gpu: 2, lr_g: 0.001, lr_d: 0.002}},"
          f" {{start: {SWITCH}, resolution: 16, ray_resolution: 4, batch_per_gpu: 3, lr_g: 0.0005, lr_d: 0.0007}}]")
TINY = ["model=mvcgan", "pack.resolution=16", "mvcgan.z_dim=8", "mvcgan.w_dim=8", "mvcgan.mapping_layers=1",
        "mvcgan.siren_layers=2", "mvcgan.siren_hidden=6", "mvcgan.samples_per_ray=6",
        "mvcgan.decoder_channels=[8, 8, 8]", "mvcgan.d_channel_base=64", "mvcgan.d_channel_min=4",
        "mvcgan.d_channel_max=16", "mvcgan.fade_steps=2", "mvcgan.r1_interval=1",
        f"mvcgan.curriculum={STAGES}", "train.steps=4", "train.checkpoint_every=1", "train.sample_every=4",
        "train.log_every=1", "train.grid_latents=1", "train.grid_views=2", "train.threads=1"]


def _phase(i, start, res, batch=4, lr=1e-3):
    return Phase(i, start, res, 4, batch, lr, lr, grows=i > 0)


def test_phase_at_and_fade():
    c = Curriculum((_phase(0, 0, 8), _phase(1, 100, 16), _phase(2, 250, 32)), fade_steps=50)
    assert [c.phase_at(s).index for s in (0, 99, 100, 249, 250, 10 ** 6)] == [0, 0, 1, 1, 2, 2]
    # pi-GAN's alpha = (step - first step at this output size) / fade_steps: the first stage fades in too
    assert c.fade(0) == 0.0 and c.fade(25) == 0.5 and c.fade(99) == 1.0
    assert c.fade(100) == 0.0 and c.fade(125) == 0.5 and c.fade(150) == 1.0
    # a stage that keeps the output size (new learning rates only) does not restart the fade
    same = Curriculum((_phase(0, 0, 8), _phase(1, 100, 16), _phase(2, 110, 16)), fade_steps=50)
    assert same.fade(110) == pytest.approx(0.2) and same.fade(150) == 1.0
    assert Curriculum((_phase(0, 0, 8),), fade_steps=0).fade(0) == 1.0
    with pytest.raises(ValueError, match="strictly increasing"):
        Curriculum((_phase(0, 0, 8), _phase(1, 0, 16)))


def test_curriculum_params_pose_weight_and_phases_above_the_data():
    p = load_params(overrides=["model=mvcgan", "dataset=ffhq256"])
    c = curriculum_from_params(p)
    assert [s.resolution for s in c.phases] == [64, 128, 256]  # the 512 stage needs 512 data
    assert [s.pose_weight for s in c.phases] == [15.0, 15.0, 0.0]  # stops above 128
    assert (c.phases[0].batch_per_gpu, c.phases[0].lr_g, c.phases[0].lr_d) == (56, 6e-5, 2e-4)
    # phases without their own pose weight: mvcgan.pose_weight up to pose_max_resolution, 0 above
    rule = curriculum_from_params(load_params(overrides=[
        "model=mvcgan", "pack.resolution=32", "mvcgan.pose_weight=3",
        "mvcgan.curriculum=[{start: 0, resolution: 16, ray_resolution: 8, batch_per_gpu: 1, lr_g: 1, lr_d: 1},"
        " {start: 5, resolution: 32, ray_resolution: 8, batch_per_gpu: 1, lr_g: 1, lr_d: 1}]",
        "mvcgan.pose_max_resolution=16"]))
    assert [s.pose_weight for s in rule.phases] == [3.0, 0.0]
    assert recipe_from_params(p).r1_gamma == 0.2 and recipe_from_params(p).views_per_latent == 1
    with pytest.raises(ParamsError, match=r"mvcgan\.curriculum\.0\.resolution"):
        curriculum_from_params(load_params(overrides=[
            "model=mvcgan", "pack.resolution=16",
            "mvcgan.curriculum=[{start: 0, resolution: 32, ray_resolution: 16, batch_per_gpu: 1, lr_g: 1, lr_d: 1}]"]))
    gmpi = curriculum_from_params(load_params(overrides=["model=gmpi"]))
    assert len(gmpi.phases) == 1 and gmpi.phases[0].ray_resolution is None


@pytest.mark.parametrize("override, message", [
    ("mvcgan.curriculum=[{start: 5, resolution: 8, ray_resolution: 4, batch_per_gpu: 1, lr_g: 1, lr_d: 1}]",
     "first stage has start 0"),
    ("mvcgan.curriculum=[{start: 0, resolution: 8, ray_resolution: 16, batch_per_gpu: 1, lr_g: 1, lr_d: 1}]",
     "mvcgan.curriculum.0"),
    ("mvcgan.curriculum=[{start: 0, resolution: 12, ray_resolution: 4, batch_per_gpu: 1, lr_g: 1, lr_d: 1}]",
     "'mvcgan.curriculum.0.resolution'"),
    ("mvcgan.mixup_max=2", "'mvcgan.mixup_max'"),
])
def test_bad_mvcgan_params_name_the_key(override, message):
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        load_params(overrides=[override])


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("curriculum")
    make_disc_dataset(root, 6)
    return root


def _train(packed, out, stop_after=None):
    from gmnr.train.loop import train
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        return train(load_params(overrides=TINY), packed / "packed", out, progress=False, stop_after=stop_after)
    finally:  # the trainer sets process-wide torch state; leave the test process as it was
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _ckpt(run_dir, step):
    return torch.load(run_dir / "checkpoints" / f"step-{step:09d}.pt", weights_only=True)


def test_two_phase_run_switches_and_resumes_into_the_second_phase(packed, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{packed / 'mlflow.db'}")
    straight = packed / "straight"
    summary = _train(packed, straight)
    assert summary["curriculum_phase"] == 1 and summary["resolution"] == 16 and summary["batch_per_gpu"] == 3
    before, after = _ckpt(straight, SWITCH), _ckpt(straight, SWITCH + 1)  # after step SWITCH - 1 / SWITCH
    assert int(before["G"]["stage_resolution"]) == 8 and before["opt_G"]["param_groups"][0]["lr"] == 0.001
    assert int(after["G"]["stage_resolution"]) == 16 and after["opt_G"]["param_groups"][0]["lr"] == 0.0005
    assert after["opt_D"]["param_groups"][0]["lr"] == 0.0007
    assert len(after["opt_G"]["param_groups"]) == 1  # the mapping network at the generator's lr (unique_lr: False)
    assert float(after["G"]["stage_fade"]) == 0.0  # the new resolution starts fading in
    assert float(before["G"]["stage_fade"]) == 0.5  # so did the first: fade 2 steps, checkpoint after step 1
    from PIL import Image
    with Image.open(straight / "samples" / "final.png") as grid:
        from gmnr.train.samples import preview_factor
        k = preview_factor(16)  # previews are upscaled (nearest) to at least 256 px tiles
        assert k == 16 and grid.size == (2 * 16 * k, 16 * k)  # 2 views of one latent at the last stage's 16 px

    from mlflow.tracking import MlflowClient
    run_id = torch.load(straight / "final.pt", weights_only=True)["mlflow_run_id"]
    history = MlflowClient(f"sqlite:///{packed / 'mlflow.db'}").get_metric_history(run_id, "resolution")
    assert sorted((m.step, m.value) for m in history) == [(1, 8.0), (2, 8.0), (3, 16.0), (4, 16.0)]

    # Stopped after the switch (checkpoint of step SWITCH + 1), and exactly at it (the checkpoint
    # of step SWITCH holds stage 0's learning rates; the next step is stage 1's first).
    for stop in (SWITCH + 1, SWITCH):
        resumed = packed / f"resumed-{stop}"
        first = _train(packed, resumed, stop_after=stop)
        assert first["step"] == stop and not (resumed / "final.pt").exists()
        second = _train(packed, resumed)
        assert second["resumed_from"].endswith(f"step-{stop:09d}.pt") and second["curriculum_phase"] == 1
        a, b = _ckpt(straight, 4), _ckpt(resumed, 4)
        for key in ("G", "D", "G_ema"):
            diff = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
            assert not diff, f"stopped at {stop}: {key}: {diff[:5]} differ after resume"
        assert b["opt_G"]["param_groups"][0]["lr"] == 0.0005 and b["opt_D"]["param_groups"][0]["lr"] == 0.0007
        assert json.loads((resumed / "train.json").read_text())["resolution"] == 16
