"""Volume rendering against closed forms: Beer-Lambert transmittance and the expected depth of a
homogeneous slab, an empty scene, and the depth of an opaque sphere from analytic ray-sphere
intersection through real cameras."""
import math

import pytest
import torch

from gmnr.render import camera, volume

F64 = torch.float64


def slab(s: float, a: float, b: float, near=0.0, far=2.0, n=401):
    """Samples every h along one ray; density s on [a, b) (a, b on sample points), 0 elsewhere."""
    t = torch.linspace(near, far, n, dtype=F64)[None]
    h = (far - near) / (n - 1)
    sigma = torch.where((t >= a - 1e-9) & (t < b - 1e-9), torch.tensor(s, dtype=F64), torch.tensor(0.0, dtype=F64))
    return t, sigma, h


def test_constant_slab_matches_beer_lambert_and_the_closed_form_depth():
    s, a, b, far = 3.0, 0.5, 0.9, 2.0
    t, sigma, h = slab(s, a, b, far=far)
    values = torch.ones(*sigma.shape, 1, dtype=F64)
    out = volume.composite(sigma, values, t, last_delta=h)
    transmittance = math.exp(-s * (b - a))
    assert float(1 - out["opacity"]) == pytest.approx(transmittance, abs=1e-8)
    assert float(out["values"][0, 0]) == pytest.approx(1 - transmittance, abs=1e-8)
    # E[t] of the continuous medium; the light passing the slab lands on the last sample (far).
    length = b - a
    inside = a * (1 - transmittance) + 1 / s - transmittance * (length + 1 / s)
    expected = inside + transmittance * far
    assert abs(float(out["depth"]) - expected) <= h


def test_thick_slab_depth_is_entry_plus_mean_free_path():
    s, a = 40.0, 0.7
    t, sigma, h = slab(s, a, 2.0 + 1.0)
    out = volume.composite(sigma, torch.zeros(*sigma.shape, 2, dtype=F64), t)
    assert abs(float(out["depth"]) - (a + 1 / s)) <= h


def test_zero_density_renders_the_background():
    t = torch.linspace(0.9, 1.1, 12, dtype=F64).expand(5, 12)
    sigma = torch.zeros(5, 12, dtype=F64)
    bg = torch.tensor([0.2, -0.4, 0.7], dtype=F64)
    out = volume.composite(sigma, torch.rand(5, 12, 3, dtype=F64), t, background=bg)
    assert torch.equal(out["weights"], torch.zeros_like(sigma))
    assert torch.allclose(out["values"], bg.expand(5, 3))
    assert torch.allclose(out["depth"], torch.full((5,), 1.1, dtype=F64))


def test_weights_are_nonnegative_and_sum_to_at_most_one():
    torch.manual_seed(0)
    t = torch.sort(torch.rand(64, 24, dtype=F64) * 3, dim=-1).values
    sigma = torch.randn(64, 24, dtype=F64) * 20
    for noise, last in ((0.0, volume.FAR_DELTA), (5.0, volume.FAR_DELTA), (0.0, 0.1)):
        w = volume.composite(sigma, torch.rand(64, 24, 3, dtype=F64), t, noise_std=noise, last_delta=last)["weights"]
        assert (w >= 0).all() and (w.sum(-1) <= 1 + 1e-8).all()


def test_depth_of_an_opaque_sphere_matches_ray_sphere_intersection():
    """Real cameras and stratified samples; the sphere's analytic first hit, as camera z."""
    near, far, n, res, rho = 0.85, 1.15, 61, 12, 0.08
    c2w = camera.pose_to_cam2world(torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([0.1, -0.15], dtype=F64),
                                   0.0, 1.0)
    k = camera.intrinsics_from_fov(12.0, res, dtype=F64)
    origins, dirs, cos = volume.camera_rays(c2w, k, res, res)
    z = volume.stratified_depths(near, far, n, (2, res, res), perturb=False, dtype=F64)
    t = z / cos[..., None]
    points = origins[..., None, :] + dirs[..., None, :] * t[..., None]
    sigma = torch.where(points.norm(dim=-1) < rho, torch.tensor(1e4, dtype=F64), torch.tensor(0.0, dtype=F64))
    out = volume.composite(sigma, torch.zeros(*sigma.shape, 1, dtype=F64), t)
    depth = out["depth"] * cos
    # |o + t d| = rho: t^2 + 2 t (o.d) + |o|^2 - rho^2 = 0
    od = (origins * dirs).sum(-1)
    disc = od ** 2 - (origins.square().sum(-1) - rho ** 2)
    hit = disc > 0
    t_hit = -od - disc.clamp_min(0).sqrt()
    z_hit = t_hit * cos
    spacing = (far - near) / (n - 1)
    assert hit.sum() > 20 and (~hit).sum() > 20, "the test needs pixels on and off the sphere"
    clear = hit & (disc > (2 * spacing) ** 2)  # rays that graze the rim can slip between samples
    assert (depth[clear] - z_hit[clear]).abs().max() <= spacing
    assert torch.allclose(depth[~hit], torch.full_like(depth[~hit], far))


def test_per_camera_intrinsics_give_the_same_rays_as_shared_ones():
    c2w = camera.pose_to_cam2world(torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.0]))
    k = camera.intrinsics_from_fov(15.0, 8)
    o1, d1, c1 = volume.camera_rays(c2w, k, 8, 8)
    o2, d2, c2 = volume.camera_rays(c2w, k.expand(2, 3, 3), 8, 8)
    assert torch.allclose(d1, d2, atol=1e-6) and torch.allclose(o1, o2) and torch.allclose(c1, c2, atol=1e-6)
    assert torch.allclose(c1[:, 4, 4], torch.cos(torch.atan(0.5 / k[0, 0] * math.sqrt(2))), atol=1e-6)


def test_stratified_samples_stay_within_half_a_spacing():
    torch.manual_seed(1)
    z = volume.stratified_depths(1.0, 2.0, 11, (3, 4), perturb=True)
    base = torch.linspace(1.0, 2.0, 11)
    assert z.shape == (3, 4, 11) and ((z - base).abs() <= 0.05 + 1e-6).all()
    assert torch.equal(volume.stratified_depths(1.0, 2.0, 11, (2,), perturb=False), base.expand(2, 11))
