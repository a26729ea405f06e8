"""MVCGAN's generator, discriminator and loss: the render protocol's shapes and ranges, the decoder's
fade-in, stereo mixup and the photometric loss on identical views, and one training step of a tiny
model on the CPU."""
import pytest
import torch

from gmnr.config import load_params
from gmnr.models.factory import build_discriminator, build_generator
from gmnr.models.mvcgan import MVCGANConfig, MVCGANGenerator
from gmnr.models.mvcgan_discriminator import PoseDiscriminator
from gmnr.render.camera import pose_to_cam2world
from gmnr.render.warp import backward_warp, photometric_loss
from gmnr.train.curriculum import curriculum_from_params
from gmnr.train.losses import PosePrior
from gmnr.train.mvcgan_loss import MVCGANLoss, stereo_mixup, topk_fraction

TINY = ["model=mvcgan", "pack.resolution=16", "mvcgan.z_dim=8", "mvcgan.w_dim=8", "mvcgan.mapping_layers=1",
        "mvcgan.siren_layers=2", "mvcgan.siren_hidden=16", "mvcgan.feature_dim=6", "mvcgan.samples_per_ray=6",
        "mvcgan.decoder_channels=8", "mvcgan.d_channel_base=64", "mvcgan.d_channel_max=16",
        "mvcgan.curriculum=[{start: 0, resolution: 8, ray_resolution: 4, batch_per_gpu: 2, lr_g: 0.001, lr_d: 0.001},"
        " {start: 10, resolution: 16, ray_resolution: 4, batch_per_gpu: 2, lr_g: 0.001, lr_d: 0.001}]"]


def tiny_params(*extra):
    return load_params(overrides=TINY + list(extra))


def cams(yaws, pitch=0.0):
    y = torch.tensor(yaws, dtype=torch.float32)
    return pose_to_cam2world(y, torch.full_like(y, pitch))


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return build_generator(tiny_params()).eval()


def test_render_protocol_shapes_ranges_and_depth(G):
    p = tiny_params()
    near, far = p.camera().depth_range
    assert G.cfg.resolution == 16 and G.z_dim == 8
    z = torch.randn(2, G.z_dim)
    ws = G.mapping(z, None, truncation_psi=0.7, update_w_avg=False)
    assert ws.shape == (2, G.num_ws, G.w_dim)
    for res in (16, 8, 4):
        G.set_stage(res, 4)
        out = G.render(ws, cams([0.0, 0.2, -0.2, 0.1, 0.0, 0.3]), n_planes=7, noise_mode="const")  # 3 views / latent
        assert out["image"].shape == (6, 3, res, res) and out["depth"].shape == (6, 1, res, res)
        if res == 4:  # the rendered image itself (above 4 the decoder's ToRGB is linear, unbounded)
            assert out["image"].abs().max() <= 1.0
        assert ((out["depth"] >= near - 1e-4) & (out["depth"] <= far + 1e-4)).all()
        assert out["features"].shape == (6, G.cfg.feature_dim, 4, 4) and out["image_raw"].abs().max() <= 1
        assert G.canonical_intrinsics().shape == (3, 3) and G.canonical_intrinsics()[0, 2] == res / 2
    G.set_stage(16, 4)
    again = G(z, cams([0.0, 0.2]), truncation_psi=1.0)["image"]
    assert again.shape == (2, 3, 16, 16)
    # Normalised intrinsics equal to the family's camera render the same image as intrinsics=None.
    k = G.canonical_intrinsics().clone()
    k[:2] /= 16
    with_k = G(z, cams([0.0, 0.2]), intrinsics=k.expand(2, 3, 3))["image"]
    assert torch.allclose(again, with_k, atol=1e-3)  # K^-1 rounding, amplified by the SIREN's frequencies


def test_stage_validation_names_the_problem(G):
    with pytest.raises(ValueError, match="rays 8"):
        G.set_stage(4, 8)
    with pytest.raises(ValueError, match="<= 16"):
        G.set_stage(32, 4)
    G.set_stage(16, 4)


def test_decoder_fade_zero_is_the_upsampled_lower_resolution(G):
    ws = G.mapping(torch.randn(1, G.z_dim), None, update_w_avg=False)
    G.set_stage(8, 4, fade=0.0)
    feats = G.render_rays(ws, cams([0.1]))["features"]
    up = torch.nn.functional.interpolate(feats[:, :3] * 2 - 1, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(G.decode(ws, feats), up, atol=1e-6)
    G.set_stage(16, 4, fade=0.0)
    G.set_stage(8, 4, fade=1.0)
    at8 = G.decode(ws, feats)
    G.set_stage(16, 4, fade=0.0)
    up8 = torch.nn.functional.interpolate(at8, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(G.decode(ws, feats), up8, atol=1e-5)
    G.set_stage(16, 4, fade=1.0)


def test_stereo_mixup_with_r_zero_is_the_identity():
    torch.manual_seed(0)
    f, w = torch.randn(3, 5, 4, 4), torch.randn(3, 5, 4, 4)
    valid = torch.rand(3, 1, 4, 4) > 0.3
    assert torch.equal(stereo_mixup(f, w, valid, torch.zeros(3)), f)
    full = stereo_mixup(f, w, valid, torch.ones(3))
    assert torch.equal(torch.where(valid, full, f), full) and torch.allclose(full[valid.expand_as(f)], w[valid.expand_as(f)])
    half = stereo_mixup(f, w, torch.ones_like(valid), torch.full((3,), 0.25))
    assert torch.allclose(half, 0.75 * f + 0.25 * w)


def test_photometric_loss_of_identical_views_is_zero(G):
    """The MVCGAN path: render, warp the same view into itself with its own depth and intrinsics."""
    G.set_stage(16, 4)
    ws = G.mapping(torch.randn(2, G.z_dim), None, update_w_avg=False)
    c = cams([0.1, -0.2])
    main = G.render_rays(ws, c)
    warped, valid = backward_warp(main["features"], main["depth_raw"], c, main["k_rays"], c, main["k_rays"])
    assert valid.all()
    rgb = main["features"][:, :3]
    assert float(photometric_loss(rgb, warped[:, :3], valid).detach()) == pytest.approx(0.0, abs=1e-5)


def test_discriminator_shapes_fade_and_bad_input():
    torch.manual_seed(0)
    D = PoseDiscriminator(16, 64, 16)
    for r in (4, 8, 16):
        logits, pose = D(torch.randn(3, 3, r, r), fade=0.5)
        assert logits.shape == (3,) and pose.shape == (3, 2)
    x = torch.randn(2, 3, 16, 16)
    faded, _ = D(x, fade=0.0)
    assert torch.allclose(faded, D(torch.nn.functional.avg_pool2d(x, 2))[0], atol=1e-5)
    with pytest.raises(ValueError, match="power of two"):
        D(torch.randn(1, 3, 12, 12))


def test_topk_schedule_goes_from_the_batch_to_its_floor():
    assert topk_fraction(0, 0.99, 2000, 0.6) == 1.0
    assert topk_fraction(2000, 0.99, 2000, 0.6) == pytest.approx(0.99)
    assert topk_fraction(10 ** 6, 0.99, 2000, 0.6) == 0.6


def test_one_training_step_of_a_tiny_model_moves_every_part():
    p = tiny_params()
    torch.manual_seed(0)
    G, D = build_generator(p), build_discriminator(p)
    cam = p.camera()
    prior = PosePrior(cam.yaw_std, cam.pitch_std, cam.truncation, cam.radius, tuple(cam.center))
    import contextlib
    loss = MVCGANLoss(G, D, prior, p.mvcgan, "random", contextlib.nullcontext)
    stage = curriculum_from_params(p).stage_at(12)
    loss.set_step(12, stage, 0.5)
    assert G.resolution == 16 and float(G.density_noise) > 0 and loss.pose_weight == 15.0
    g = torch.Generator().manual_seed(1)
    real, real_c = torch.rand(2, 3, 16, 16) * 2 - 1, prior.sample(2, g, "cpu")
    z = torch.randn(2, G.z_dim)
    d_loss, stats = loss.discriminator_loss(real, real_c, z, prior.sample(2, g, "cpu"))
    r1, _ = loss.r1_loss(real, real_c, 1)
    (d_loss + r1).backward()
    assert {"loss_D", "loss_pose_D"} <= set(stats)
    used = {n: q for n, q in D.named_parameters() if not n.startswith("from_rgb.4.")}  # 16 fading over 8
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in used.values())
    D.zero_grad()
    g_loss, stats = loss.generator_loss(z, prior.sample(2, g, "cpu"))
    g_loss.backward()
    assert {"loss_G", "loss_photometric", "warp_valid", "loss_pose_G"} <= set(stats)
    for name in ("field.siren.0.linear.weight", "film.affines.0.weight", "mapping.fc0.weight",
                 "decoder.blocks.16.conv1.weight", "decoder.blocks.8.to_rgb.weight"):
        grad = dict(G.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_config_dataclass_rejects_inconsistent_resolutions():
    with pytest.raises(ValueError, match="ray_resolution"):
        MVCGANGenerator(MVCGANConfig(resolution=16, ray_resolution=32, min_ray_resolution=4))
