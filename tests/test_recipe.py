"""GMPI's fine-tune recipe against the published values and analytic cases: shading-guided training
(light_renderer.py), torch_ema's EMA schedule, which parameters train, R1 every step."""
import math

import pytest
import torch

from gmnr.config import load_params
from gmnr.render.camera import pose_to_cam2world
from gmnr.render.shading import normals, shade_colours, shading_map, texel_points, texture_depth
from gmnr.train.losses import Shading


def test_texture_depth_is_the_composited_plane_depth():
    depths = torch.tensor([0.95, 1.0, 1.12])
    alpha = torch.zeros(2, 3, 1, 4, 4)
    alpha[0, 1] = 1.0          # image 0: opaque middle plane
    alpha[1, 0] = 0.5          # image 1: half-transparent front plane over the background
    alpha[:, 2] = 1.0
    depth = texture_depth(alpha, depths)
    assert torch.allclose(depth[0], torch.full((1, 4, 4), 1.0), atol=1e-6)
    assert torch.allclose(depth[1], torch.full((1, 4, 4), 0.5 * 0.95 + 0.5 * 1.12), atol=1e-6)


def test_normals_of_analytic_planes():
    """A plane z = a x + b y + c seen from the camera at the origin: unit normal (a, b, -1) / norm,
    facing the camera (-z); the border is replicated."""
    ys, xs = torch.meshgrid(torch.linspace(-0.1, 0.1, 7), torch.linspace(-0.1, 0.1, 9), indexing="ij")
    for a, b in ((0.0, 0.0), (0.3, 0.0), (-0.2, 0.4)):
        points = torch.stack([xs, ys, a * xs + b * ys + 1.0], -1)[None]
        expected = torch.tensor([a, b, -1.0]) / math.sqrt(a * a + b * b + 1)
        assert torch.allclose(normals(points), expected.expand(1, 7, 9, 3), atol=1e-5)


def test_point_cloud_lifts_the_background_texels_to_the_depth():
    depth = torch.full((1, 1, 16, 16), 1.05)
    points = texel_points(depth, torch.tensor([0.2, 0.1]), far=1.12)
    assert torch.allclose(points[..., 2], torch.full((1, 16, 16), 1.05), atol=1e-6)
    assert torch.allclose(points[0, 0, 0, :2], torch.tensor([-0.2, -0.1]) * 1.05 / 1.12, atol=1e-6)
    assert torch.allclose(points[0, -1, -1, :2], torch.tensor([0.2, 0.1]) * 1.05 / 1.12, atol=1e-6)


def test_lambertian_shading_of_a_flat_mpi():
    """A fronto-parallel MPI: lit head-on (light along +z, from the camera side) every texel gets
    ambient + diffuse; lit from the side (light along +x) only ambient."""
    depths = torch.tensor([0.95, 1.12])
    alpha = torch.ones(2, 2, 1, 16, 16)
    light = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    s = shading_map(alpha, depths, torch.tensor([0.2, 0.2]), light, ambient=0.9, diffuse=0.1)
    assert s.shape == (2, 1, 1, 16, 16)
    assert torch.allclose(s[0], torch.full_like(s[0], 1.0), atol=1e-4)
    assert torch.allclose(s[1], torch.full_like(s[1], 0.9), atol=1e-4)
    colours = torch.tensor([-1.0, 0.0, 0.9]).reshape(1, 3, 1, 1).expand(2, 3, 16, 16)
    lit = shade_colours(colours, s * 2)  # [0, 1] units times 2, clipped at 1
    assert torch.allclose(lit[0, :, 0, 0], torch.tensor([-1.0, 1.0, 1.0]))
    assert torch.allclose(lit[1, :, 0, 0], torch.tensor([-1.0, 0.8, 1.0]), atol=1e-6)


def test_shading_schedule_and_light_prior():
    sh = Shading(start=1000, grow=500)
    assert [sh.strength(s) for s in (0, 1000, 1250, 1500, 9999)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    torch.manual_seed(0)
    canonical = pose_to_cam2world(torch.zeros(1), torch.zeros(1))[0]
    light = sh.light_directions(4000, canonical)
    assert torch.allclose(light.norm(dim=1), torch.ones(4000), atol=1e-5)
    # in the canonical (OpenCV) frame the light shines towards +z; pitch ~ N(0.2, 0.05) puts it
    # above the face, so it points down (+y); yaw ~ N(0, 0.2) is symmetric
    pitch = torch.asin(light[:, 1])
    yaw = torch.atan2(-light[:, 0], light[:, 2])
    assert (light[:, 2] > 0).all()
    assert abs(pitch.mean() - 0.2) < 0.01 and abs(pitch.std() - 0.05 * 0.88) < 0.01  # 2-sigma truncation
    assert abs(yaw.mean()) < 0.02 and abs(yaw.std() - 0.2 * 0.88) < 0.02
    assert pitch.max() <= 0.3 + 1e-5 and yaw.abs().max() <= 0.4 + 1e-5


def test_shading_lights_the_gmpi_mpi_only_after_its_start():
    from tests.test_gmpi import _g
    G = _g(16, 16, 4)
    mpi = G.synthesize(G.mapping(torch.randn(2, 16), None), 4)
    sh = Shading(start=10, grow=10)
    assert sh.apply(G, mpi, 10) is mpi
    torch.manual_seed(0)
    lit = sh.apply(G, mpi, 15)
    assert torch.equal(lit["alpha"], mpi["alpha"])
    ratio = ((lit["rgb"] + 1) / ((mpi["rgb"] + 1).clamp(min=1e-3)))  # shading multiplies [0, 1] colours
    assert ratio.max() <= 0.5 * (0.9 + 0.1) + 1e-4, "at half the ramp, at most half the light"


def test_ema_follows_torch_ema():
    """torch_ema (GMPI, GMNR, pi-GAN): decay min(0.999, (1 + n) / (10 + n)) after the n-th update;
    with ema_decay null, StyleGAN2's half-life in kimg."""
    from gmnr.train.loop import _ema_beta
    params = load_params(overrides=["dataset=ffhq256"])
    assert params.train.ema_decay == 0.999
    assert _ema_beta(params, 64, 0) == pytest.approx(2 / 11)
    assert _ema_beta(params, 64, 99) == pytest.approx(101 / 110)
    assert _ema_beta(params, 64, 100_000) == pytest.approx(0.999)
    kimg = load_params(overrides=["dataset=ffhq256", "train.ema_decay=null", "train.ema_kimg=10"])
    assert _ema_beta(kimg, 64, 5) == pytest.approx(0.5 ** (64 / 10_000))


def test_published_recipe_defaults():
    p = load_params(overrides=["dataset=ffhq256"])
    t, g = p.train, p.gmpi
    assert (t.lr_g, t.lr_d, tuple(t.betas), t.grad_clip, t.r1_gamma, t.r1_interval) == (0.002, 0.002, (0.0, 0.9), 10.0, 10.0, 1)
    assert t.views_per_latent == 4 and g.mbstd_group_size == 1 and g.d_cmap_dim == 16 and g.train_mapping
    assert t.steps == 5000 and t.ema_decay == 0.999  # configs/gmpi.yml total_iters 5001 (GMNR: 6001)
    assert (g.shading.enabled, g.shading.start, g.shading.ambient, g.shading.diffuse) == (True, 1000, 0.9, 0.1)
    assert p.gmnr.shading is False
    from gmnr.train.curriculum import default_batch_per_gpu  # curriculums.FFHQ res_dict: 8 at 256, 4 above
    assert [default_batch_per_gpu(load_params(overrides=[f"dataset={d}"])) for d in ("ffhq256", "ffhq512")] == [8, 4]


@pytest.mark.parametrize("train_mapping", [True, False])
def test_which_generator_parameters_train(tmp_path, train_mapping):
    """The published code fine-tunes the mapping network with the rest (its G_tune_mapping flag is
    never read); gmpi.train_mapping=false freezes it: no gradient, not in the optimiser, unchanged."""
    from gmnr.train import distributed as dist
    from gmnr.train.loop import Trainer
    from tests.conftest import make_disc_dataset
    from tests.test_train import TINY
    overrides = [v for v in TINY if v != "-S"] + ["model=gmpi", f"gmpi.train_mapping={str(train_mapping).lower()}"]
    params = load_params(overrides=overrides)
    trainer = Trainer(params, make_disc_dataset(tmp_path, 8), tmp_path / "run", dist.init("cpu"))
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    trainer.train_step(0)
    after = trainer.G.state_dict()
    in_optimiser = {id(p) for group in trainer.opt_G.param_groups for p in group["params"]}
    for name, p in trainer.G.named_parameters():
        mapping = name.startswith("mapping.")
        assert (id(p) in in_optimiser) == (train_mapping or not mapping), name
        if mapping and not train_mapping:
            assert torch.equal(after[name], before[name]), name
    changed = not torch.equal(after["mapping.fc0.weight"], before["mapping.fc0.weight"])
    assert changed == train_mapping


def test_camera_label_is_the_world_to_camera_matrix_in_gmpis_world_frame():
    """GMPI flattens inverse(c2w) with its world frame at the canonical camera: the canonical camera's
    label is the identity, and a camera's label maps canonical-frame points into that camera."""
    from gmnr.models.factory import camera_label
    frame = pose_to_cam2world(torch.zeros(1), torch.zeros(1))[0]
    cams = pose_to_cam2world(torch.tensor([0.0, 0.4]), torch.tensor([0.0, -0.2]))
    labels = camera_label(cams, frame)
    assert labels.shape == (2, 16)
    assert torch.allclose(labels[0].reshape(4, 4), torch.eye(4), atol=1e-6)
    point_canonical = torch.tensor([0.05, -0.02, 1.0, 1.0])            # near the face, canonical frame
    point_world = frame @ point_canonical
    expected = torch.linalg.inv(cams[1]) @ point_world                 # the same point in camera 1's frame
    assert torch.allclose(labels[1].reshape(4, 4) @ point_canonical, expected, atol=1e-5)


def test_r1_is_half_gamma_times_the_squared_gradient_norm():
    """GMPI: grad_penalty = 0.5 * r1_lambda * mean ||d D(x) / dx||^2 over the real batch, every step
    (interval 1); a D linear in x has the gradient of its weight, whatever x is."""
    import contextlib

    from gmnr.train.losses import GMPILoss

    class LinearD(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 4, 4))

        def forward(self, x, c):
            return (x * self.w).sum(dim=(1, 2, 3))[:, None]
    D = LinearD()
    loss = GMPILoss(None, D, 10.0, 1, "const", contextlib.nullcontext, torch.eye(4))
    real = torch.randn(5, 3, 4, 4)
    value, stats = loss.r1_loss(real, pose_to_cam2world(torch.zeros(5), torch.zeros(5)), interval=1)
    assert torch.allclose(value, 0.5 * 10.0 * D.w.square().sum(), rtol=1e-5)
    assert torch.allclose(stats["r1_penalty"], D.w.square().sum(), rtol=1e-5)
