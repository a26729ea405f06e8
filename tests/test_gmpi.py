import pytest
import torch

from gmnr.models.gmpi import GMPIConfig, GMPIGenerator, PlaneAlpha
from gmnr.render.camera import pose_to_cam2world


def _g(resolution=32, w_dim=32, planes=6, alpha_max_res=256):
    torch.manual_seed(0)
    return GMPIGenerator(GMPIConfig(resolution=resolution, z_dim=16, w_dim=w_dim, mapping_layers=2, channel_base=256,
                                    channel_max=32, planes_train=planes, planes_eval=planes + 2,
                                    alpha_max_res=alpha_max_res))


@pytest.mark.parametrize("resolution, w_dim, planes", [(16, 16, 4), (32, 48, 7)])
def test_shapes_and_background_plane(resolution, w_dim, planes):
    g = _g(resolution, w_dim, planes)
    cams = pose_to_cam2world(torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.0]))
    out = g(torch.randn(2, 16), cams)
    assert out["image"].shape == (2, 3, resolution, resolution)
    assert out["depth"].shape == (2, 1, resolution, resolution)
    assert out["alpha"].shape == (2, planes, 1, resolution, resolution)
    assert torch.all(out["alpha"][:, -1] == 1), "the farthest plane is the opaque background"
    assert out["alpha_acc"].max() <= 1 + 1e-5
    frontal = g(torch.randn(1, 16), pose_to_cam2world(torch.tensor([0.0]), torch.tensor([0.0])))
    assert torch.allclose(frontal["alpha_acc"], torch.ones_like(frontal["alpha_acc"]), atol=1e-5), \
        "from the canonical camera every ray ends on the opaque background plane"
    g.eval()
    assert g(torch.randn(1, 16), cams[:1])["alpha"].shape[1] == planes + 2, "eval uses planes_eval"


def test_alpha_branch_equals_the_naive_per_plane_computation():
    """ToAlpha(norm(x) + e_p) evaluated plane by plane, without the linearity shortcut."""
    torch.manual_seed(1)
    layer = PlaneAlpha(8, 12)
    with torch.no_grad():
        layer.depth_bias.normal_()
        layer.alpha_bias.normal_()
    x, w, d = torch.randn(2, 8, 5, 5), torch.randn(2, 12), torch.linspace(0, 1, 4)
    got = layer(x, w, d)
    xn = torch.nn.functional.instance_norm(x)
    style = layer.alpha_affine(w) * layer.alpha_weight * layer.weight_gain
    for p in range(4):
        emb = layer.depth_affine(w) * layer.depth_weight * d[p] + layer.depth_bias
        h = xn + emb[:, :, None, None]
        naive = (h * style[:, :, None, None]).sum(1, keepdim=True) + layer.alpha_bias
        assert torch.allclose(got[:, p], naive, atol=1e-5)


def test_alpha_depends_on_the_plane_and_views_share_one_mpi():
    g = _g()
    ws = g.mapping(torch.randn(2, 16), None)
    _, alpha, _ = g.synthesize(ws, 6)
    assert not torch.allclose(alpha[:, 0], alpha[:, 1])
    cams = pose_to_cam2world(torch.tensor([0.3, -0.3, 0.1, 0.0]), torch.zeros(4))
    many = g.render(ws, cams)["image"]  # 2 views per latent
    single = g.render(ws[:1], cams[1:2])["image"]
    assert torch.allclose(many[1], single[0], atol=1e-5)


def test_alpha_max_res_below_the_image_resolution_is_upsampled():
    g = _g(resolution=32, alpha_max_res=8)
    assert g.alpha_resolutions == [4, 8]
    _, alpha, _ = g.synthesize(g.mapping(torch.randn(1, 16), None), 5)
    assert alpha.shape[-1] == 32


def test_gradients_reach_every_generator_parameter():
    g = _g()
    out = g(torch.randn(2, 16), pose_to_cam2world(torch.tensor([0.2, -0.1]), torch.zeros(2)), noise_mode="random")
    (out["image"].square().mean() + out["depth"].mean()).backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
