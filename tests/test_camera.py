import math

import pytest
import torch

from gmnr.render import camera



@pytest.fixture(autouse=True)
def _float64():
    """Analytic checks in double precision, without leaking the default into other test files."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_frontal_camera_is_opencv_look_at():
    m = camera.pose_to_cam2world(torch.tensor([0.0]), torch.tensor([0.0]), 0.0, radius=1.0)[0]
    expected = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]])
    assert torch.allclose(m, expected, atol=1e-12)


def test_yaw_moves_camera_towards_plus_x_and_pitch_up():
    m = camera.pose_to_cam2world(torch.tensor([0.3, 0.0]), torch.tensor([0.0, 0.2]), 0.0, radius=2.0)
    assert m[0, 0, 3] == pytest.approx(2 * math.sin(0.3))
    assert m[1, 1, 3] == pytest.approx(2 * math.sin(0.2))
    # both cameras still look at the origin
    for c2w in m:
        forward, position = c2w[:3, 2], c2w[:3, 3]
        assert torch.allclose(forward, -position / position.norm(), atol=1e-12)


def test_pose_round_trip():
    g = torch.Generator().manual_seed(0)
    yaw = (torch.rand(64, generator=g) - 0.5) * 2.0
    pitch = (torch.rand(64, generator=g) - 0.5) * 1.2
    roll = (torch.rand(64, generator=g) - 0.5) * 0.6
    m = camera.pose_to_cam2world(yaw, pitch, roll, radius=1.3, center=(0.1, -0.2, 0.0))
    back = camera.cam2world_to_pose(m, center=(0.1, -0.2, 0.0))
    for name, truth in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
        assert torch.allclose(back[name], truth, atol=1e-10), name
    assert torch.allclose(back["distance"], torch.full((64,), 1.3), atol=1e-12)
    # rotations stay orthonormal
    r = m[:, :3, :3]
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(64, 3, 3), atol=1e-12)


def test_intrinsics_and_projection_of_the_look_at_point_and_fov_edge():
    k = camera.intrinsics_from_fov(12.6, 256)
    m = camera.pose_to_cam2world(torch.tensor([0.4]), torch.tensor([-0.1]), 0.05, radius=1.0)
    uv, depth = camera.project(torch.zeros(1, 1, 3), m, k)
    assert torch.allclose(uv[0, 0], torch.tensor([128.0, 128.0]), atol=1e-9)
    assert depth[0, 0] == pytest.approx(1.0)
    # a point at the edge of the field of view lands on the image border
    frontal = camera.pose_to_cam2world(torch.tensor([0.0]), torch.tensor([0.0]), 0.0, radius=1.0)
    edge = torch.tensor([[[math.tan(math.radians(6.3)), 0.0, 0.0]]])
    uv, _ = camera.project(edge, frontal, k)
    assert uv[0, 0, 0] == pytest.approx(256.0)
    assert camera.intrinsics_from_fov(12.6, 256, normalized=True)[0, 2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="fov_deg"):
        camera.intrinsics_from_fov(0.0, 256)


def test_pixel_rays_hit_the_points_they_project_from():
    k = camera.intrinsics_from_fov(12.6, 32)
    m = camera.pose_to_cam2world(torch.tensor([0.2]), torch.tensor([0.1]), 0.1, radius=1.0)
    origins, dirs = camera.pixel_rays(m, k, 32, 32)
    points = origins + 0.9 * dirs
    uv, _ = camera.project(points.reshape(1, -1, 3), m, k)
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    assert torch.allclose(uv[0], torch.stack([xs, ys], -1).reshape(-1, 2), atol=1e-9)


def test_pose_prior_is_truncated_with_the_right_spread():
    g = torch.Generator().manual_seed(1)
    s = camera.sample_pose_prior(20000, 0.289, 0.127, 2.0, generator=g)
    assert s["yaw"].abs().max() <= 2 * 0.289 + 1e-9
    assert s["pitch"].abs().max() <= 2 * 0.127 + 1e-9
    # std of a standard normal truncated at +-2 is 0.8796
    assert s["yaw"].std().item() == pytest.approx(0.289 * 0.8796, rel=0.03)
