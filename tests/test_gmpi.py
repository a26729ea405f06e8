"""GMPI's generator against the published computation (apple/ml-gmpi networks_cond_on_pos_enc.py,
mpi_renderer.py with the confined volume), each piece checked by an independent, naive version."""
import math

import pytest
import torch

from gmnr.models.gmnr import GMNRConfig, GMNRGenerator
from gmnr.models.gmpi import (DepthEmbedding, GMPIConfig, GMPIGenerator, PlaneAlpha, border_background_features,
                              instance_normalize)
from gmnr.models.stylegan2 import bias_act, modulated_conv2d
from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world
from gmnr.render.mpi import confined_plane_extents, plane_texture_intrinsics


def _cfg(resolution=32, w_dim=32, planes=6, alpha_max_res=256):
    return dict(resolution=resolution, z_dim=16, w_dim=w_dim, mapping_layers=2, channel_base=256, channel_max=32,
                planes_train=planes, planes_eval=planes + 2, alpha_max_res=alpha_max_res)


def _g(resolution=32, w_dim=32, planes=6, alpha_max_res=256):
    torch.manual_seed(0)
    return GMPIGenerator(GMPIConfig(**_cfg(resolution, w_dim, planes, alpha_max_res)))


@pytest.mark.parametrize("resolution, w_dim, planes", [(16, 16, 4), (32, 48, 7)])
def test_shapes_background_plane_and_activations(resolution, w_dim, planes):
    g = _g(resolution, w_dim, planes)
    with torch.no_grad():  # large weights: tanh must still bound colours and alpha
        g.synthesis.b4.torgb.weight.mul_(50)
    cams = pose_to_cam2world(torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.0]))
    out = g(torch.randn(2, 16), cams)
    assert out["image"].shape == (2, 3, resolution, resolution)
    assert out["depth"].shape == (2, 1, resolution, resolution)
    assert out["alpha"].shape == (2, planes, 1, resolution, resolution)
    assert out["mpi_background"].shape == out["mpi_rgb"].shape == (2, 3, resolution, resolution)
    assert torch.all(out["alpha"][:, -1] == 1), "the farthest plane is the opaque background"
    assert out["alpha"].min() >= 0 and out["alpha"].max() <= 1
    assert out["mpi_rgb"].abs().max() <= 1 and out["mpi_rgb"].abs().max() > 0.99, "tanh on the image"
    assert out["alpha_acc"].max() <= 1 + 1e-5
    assert out["k_src"].shape == (planes, 3, 3)
    g.eval()
    assert g(torch.randn(1, 16), cams[:1])["alpha"].shape[1] == planes + 2, "eval uses planes_eval"


def test_instance_norm_is_gmpi_calc_mean_std():
    """(x - mean) / (sqrt(unbiased var + 1e-8) + 1e-8) per channel, unlike F.instance_norm (biased, 1e-5)."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 3 + 1
    flat = x.reshape(2, 3, -1)
    mean = flat.sum(-1) / 20
    var = ((flat - mean[..., None]) ** 2).sum(-1) / 19
    expected = (x - mean[..., None, None]) / ((var + 1e-8).sqrt() + 1e-8)[..., None, None]
    assert torch.allclose(instance_normalize(x), expected, atol=1e-12)
    assert not torch.allclose(instance_normalize(x), torch.nn.functional.instance_norm(x), atol=1e-3)


def test_depth_embedding_equals_four_modulated_1x1_convolutions():
    """GMPI's ToRGBLayerDeeperModulatedConv on the [1, 1, 1] depth input: modulated_conv2d (no
    demodulation) + bias + leaky ReLU (gain sqrt 2) four times, widths 1 -> C/4 -> C/2 -> C -> C."""
    torch.manual_seed(2)
    emb = DepthEmbedding(16, 12, conv_clamp=256)
    with torch.no_grad():
        for b in emb.biases:
            b.normal_()
    assert [tuple(w.shape) for w in emb.weights] == [(4, 1), (8, 4), (16, 8), (16, 16)]
    depth01, w = torch.tensor([0.0, 0.3, 1.0]), torch.randn(2, 12)
    got = emb(depth01, w)
    assert got.shape == (2, 3, 16)
    for p, d in enumerate(depth01.tolist()):
        h = torch.full((2, 1, 1, 1), d)
        for affine, weight, bias in zip(emb.affines, emb.weights, emb.biases):
            styles = affine(w) / math.sqrt(weight.shape[1])
            h = modulated_conv2d(h, weight[:, :, None, None], styles, demodulate=False)
            h = bias_act(h, bias, act="lrelu", clamp=256)
        assert torch.allclose(got[:, p], h[:, :, 0, 0], atol=1e-5)


def test_alpha_branch_equals_the_naive_per_plane_computation():
    """ToAlpha(norm(x) + e_p) evaluated plane by plane with the ToRGB layer's own modulated
    convolution (published: cond_x = normalize(x) + embed, toalpha(cond_x, w_torgb)), without the
    linearity shortcut."""
    torch.manual_seed(1)
    layer = PlaneAlpha(8, 12)
    with torch.no_grad():
        layer.to_alpha.bias.normal_()
    x, w1, w2, d = torch.randn(2, 8, 5, 5), torch.randn(2, 12), torch.randn(2, 12), torch.linspace(0, 1, 4)
    got = layer(x, w1, w2, d)
    assert got.shape == (2, 4, 1, 5, 5)
    emb = layer.depth_embed(d, w1)  # [B, P, C]
    for p in range(4):
        cond = instance_normalize(x) + emb[:, p, :, None, None]
        assert torch.allclose(got[:, p], layer.to_alpha(cond, w2), atol=1e-5)


def test_background_features_follow_the_published_border_rule():
    """Column by column: the left/right floor(0.05 W) (at least 1) columns kept, between them
    (1 - t) x[pad] + t x[W - pad - 1] with t = (j - pad) / (W - 2 pad); detached."""
    for width in (4, 16, 64):
        x = torch.randn(2, 3, 5, width, requires_grad=True)
        out = border_background_features(x)
        pad = max(1, int(0.05 * width))
        assert not out.requires_grad
        for j in range(width):
            if j < pad or j >= width - pad:
                expected = x[..., j]
            else:
                t = (j - pad) / (width - 2 * pad)
                expected = (1 - t) * x[..., pad] + t * x[..., width - pad - 1]
            assert torch.allclose(out[..., j], expected.detach(), atol=1e-5), (width, j)


def test_background_plane_trains_torgb_only_and_differs_from_the_face():
    """Detached features: the background colour gives gradient to the ToRGB layers only (not to
    the convolutions that make the face), and it is not the face image."""
    g = _g(16, 16, 4)
    mpi = g.synthesize(g.mapping(torch.randn(2, 16), None), 4, noise_mode="const")
    mpi["background"].square().sum().backward()
    for name, p in g.synthesis.named_parameters():
        touched = p.grad is not None and p.grad.abs().sum() > 0
        assert touched == (".torgb." in name), name
    assert not torch.allclose(mpi["background"], mpi["rgb"], atol=1e-2)


def test_alpha_above_alpha_max_res_is_only_fir_upsampled():
    """Blocks above alpha_max_res add nothing: the 32 px logits are the 8 px logits FIR-upsampled
    twice (the skip path), not a bilinear resize."""
    from gmnr.models.stylegan2 import setup_filter, upsample2d
    g = _g(resolution=32, alpha_max_res=8)
    assert g.alpha_resolutions == [4, 8]
    ws = g.mapping(torch.randn(1, 16), None)
    alpha = g.synthesize(ws, 5)["alpha"][:, :-1]
    _, features = g.synthesis(ws, return_features=True)
    block_ws = g.synthesis.split_ws(ws)
    depths = g.plane_depths(5)
    d01 = (depths - 0.95) / (1.12 - 0.95)
    f = setup_filter()
    logits = g.alpha_layers["4"](features[4], block_ws[4][:, -2], block_ws[4][:, -1], d01)[0]
    logits = upsample2d(logits, f) + g.alpha_layers["8"](features[8], block_ws[8][:, -2], block_ws[8][:, -1], d01)[0]
    logits = upsample2d(upsample2d(logits, f), f)  # [P, 1, 32, 32]
    assert torch.allclose(alpha[0], ((torch.tanh(logits) + 1) / 2)[:-1], atol=1e-5)


def test_gradients_reach_every_generator_parameter():
    g = _g()
    out = g(torch.randn(2, 16), pose_to_cam2world(torch.tensor([0.2, -0.1]), torch.zeros(2)), noise_mode="random")
    (out["image"].square().mean() + out["depth"].mean() + out["mpi_background"].mean()).backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


# -- the confined volume -------------------------------------------------------------------------

def test_confined_extents_front_planes_span_the_canonical_frustum_at_the_far_plane():
    depths = torch.tensor([0.95, 1.0, 1.12])
    ext = confined_plane_extents(depths, 12.6, 1.0, (0, 0, 0), 0.578, 0.254)
    front = 1.12 * math.tan(math.radians(6.3))
    assert torch.allclose(ext[:-1], torch.full((2, 2), front), atol=1e-7)
    assert (ext[-1] > ext[0]).all()
    no_box = confined_plane_extents(depths, 12.6, 1.0, (0, 0, 0), 0.0, 0.0)
    assert torch.allclose(no_box[-1], torch.full((2,), front * 1.001), atol=1e-7), "a single camera: its frustum"


def test_background_extent_is_the_worst_corner_ray_of_the_box_enlarged():
    """Ray cast from the four corner cameras of the box through their image corners (the frustum's
    edges): the farthest hit on the far plane, times 1.001, is the background's half-extent."""
    yaw_max, pitch_max, far, fov = 0.578, 0.254, 1.12, 12.6
    ext = confined_plane_extents(torch.tensor([0.95, far]), fov, 1.0, (0, 0, 0), yaw_max, pitch_max)[-1]
    canon = pose_to_cam2world(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    k = intrinsics_from_fov(fov, 2, dtype=torch.float64)  # a 2 x 2 image: corners at pixel (0|2, 0|2)
    worst = torch.zeros(2, dtype=torch.float64)
    for sy in (-1, 1):
        for sp in (-1, 1):
            cam = pose_to_cam2world(torch.tensor([sy * yaw_max], dtype=torch.float64),
                                    torch.tensor([sp * pitch_max], dtype=torch.float64))
            rel = torch.linalg.solve(canon, cam)[0]  # camera -> canonical frame
            for u in (0.0, 2.0):
                for v in (0.0, 2.0):
                    d = rel[:3, :3] @ torch.linalg.solve(k, torch.tensor([u, v, 1.0], dtype=torch.float64))
                    hit = rel[:3, 3] + (far - rel[2, 3]) / d[2] * d
                    worst = torch.maximum(worst, hit[:2].abs())
    assert torch.allclose(ext.double(), worst * 1.001, rtol=1e-5)


def test_texture_intrinsics_put_the_outer_texel_centres_on_the_plane_edges():
    depths, half = torch.tensor([0.9, 1.1]), torch.tensor([[0.1, 0.2], [0.3, 0.25]])
    k = plane_texture_intrinsics(depths, half, (8, 16))
    for p in range(2):
        for sx, sy, u, v in ((-1, -1, 0.5, 0.5), (1, 1, 15.5, 7.5)):
            point = torch.tensor([sx * half[p, 0], sy * half[p, 1], depths[p]])
            uvw = k[p] @ point
            assert torch.allclose(uvw[:2] / uvw[2], torch.tensor([u, v]), atol=1e-5)


def _box_cameras(cfg: GMPIConfig, n: int = 5, scale: float = 1.0):
    ys = torch.linspace(-1, 1, n) * cfg.yaw_max * scale
    ps = torch.linspace(-1, 1, n) * cfg.pitch_max * scale
    yaw, pitch = torch.meshgrid(ys, ps, indexing="ij")
    return pose_to_cam2world(yaw.reshape(-1), pitch.reshape(-1), 0.0, cfg.radius, cfg.center)


@pytest.mark.parametrize("model", ["gmpi", "gmnr"])
@pytest.mark.parametrize("resolution, planes", [(16, 4), (32, 16), (64, 32)])
def test_every_camera_of_the_pose_box_is_covered(model, resolution, planes):
    """The contract of the confined volume: alpha_acc = 1 at every pixel for every camera of the
    pose box (a 5 x 5 grid including the four corners), training and evaluation plane counts; a
    camera well outside the box does see past the planes (the test can fail)."""
    torch.manual_seed(0)
    cfg = _cfg(resolution, 16, planes)
    G = GMNRGenerator(GMNRConfig(**cfg, vdr_k_hidden=8, vdr_k_layers=1, vdr_h_hidden=8, vdr_h_layers=1)) \
        if model == "gmnr" else GMPIGenerator(GMPIConfig(**cfg))
    G.eval()
    cams = _box_cameras(G.cfg)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, 16), None)
        for n in (G.cfg.planes_train, G.cfg.planes_eval):
            acc = G.render(ws, cams, n_planes=n)["alpha_acc"]
            assert (acc - 1).abs().max() < 1e-4, (n, (acc - 1).abs().max())
        outside = G.render(ws, _box_cameras(G.cfg, 3, scale=3.0), n_planes=planes)["alpha_acc"]
    assert (outside < 1 - 1e-3).any()
