import math

import pytest
import torch

from gmnr.models.gmnr import (AlphaVdR, GMNRConfig, GMNRGenerator, canonical_pixel_directions, direction_encoding,
                              positional_encoding, sample_pairs)
from gmnr.models.gmpi import GMPIConfig, GMPIGenerator
from gmnr.render.camera import pixel_rays, pose_to_cam2world
from gmnr.render.mpi import _plane_grid, _sample_planes, _sample_shared, composite, plane_depth_in_target, \
    plane_homographies

SMALL_VDR = dict(vdr_k_hidden=32, vdr_k_layers=2, vdr_h_hidden=16, vdr_h_layers=1)


def _cfg(resolution=32, w_dim=32, planes=6):
    return dict(resolution=resolution, z_dim=16, w_dim=w_dim, mapping_layers=2, channel_base=256, channel_max=32,
                planes_train=planes, planes_eval=planes + 2)


def _pair(resolution=32, w_dim=32, planes=6, **vdr):
    """A GMPI generator and a GMNR generator holding the same GMPI weights."""
    torch.manual_seed(0)
    gmpi = GMPIGenerator(GMPIConfig(**_cfg(resolution, w_dim, planes)))
    gmnr = GMNRGenerator(GMNRConfig(**_cfg(resolution, w_dim, planes), **{**SMALL_VDR, **vdr}))
    keys = gmnr.load_state_dict(gmpi.state_dict(), strict=False)
    assert not keys.unexpected_keys and all(k.startswith("vdr.") for k in keys.missing_keys)
    return gmpi, gmnr


def _cams(n=4):
    yaw = torch.tensor([0.3, -0.2, 0.1, 0.0, -0.35, 0.25])[:n]
    pitch = torch.tensor([0.1, 0.0, -0.1, 0.05, 0.12, -0.08])[:n]
    return pose_to_cam2world(yaw, pitch)


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


# -- encodings and the module ---------------------------------------------------------------------

def test_encodings_match_their_formulas():
    x = torch.tensor([[0.3, -0.7]])
    enc = positional_encoding(x, 3)  # GMNR: 0.5 pi 2^k
    assert enc.shape == (1, 12)
    expected = [f(2 ** k * math.pi / 2 * v) for v in (0.3, -0.7) for k in range(3) for f in (math.sin, math.cos)]
    assert torch.allclose(enc[0], torch.tensor(expected), atol=1e-6)
    assert torch.equal(enc, torch.cat([positional_encoding(x[:, :1], 3), positional_encoding(x[:, 1:], 3)], 1))
    dirs = direction_encoding(x, (1, 2, 4))
    expected = [f(k * math.pi / 2 * v) for v in (0.3, -0.7) for k in (1, 2, 4) for f in (math.sin, math.cos)]
    assert dirs.shape == (1, 12) and torch.allclose(dirs[0], torch.tensor(expected), atol=1e-6)
    assert direction_encoding(x, (1, 3)).shape == (1, 8)


def test_published_dims_and_parameter_count():
    vdr = AlphaVdR(512)
    assert vdr.mlp_k.dims == [568, 784, 784, 784, 12]
    assert vdr.mlp_h.dims == [524, 64, 64, 4]
    n = sum(p.numel() for p in vdr.parameters())
    print(f"alpha-VdR parameters at the published settings: {n:,}")
    assert 1.6e6 <= n <= 1.8e6


def test_dims_derive_from_w_dim_and_encodings():
    vdr = AlphaVdR(64, k_hidden=8, h_hidden=8)
    assert (vdr.k_in_features, vdr.h_in_features) == (120, 76)
    vdr = AlphaVdR(64, pos_freqs=4, depth_freqs=2, dir_freqs=(1, 2), k_hidden=8, k_layers=1, h_hidden=8, h_layers=1)
    assert vdr.mlp_k.dims == [2 * 8 + 4 + 64, 8, 12] and vdr.mlp_h.dims == [8 + 64, 8, 4]


def test_delta_is_k_times_h_and_zero_output_is_a_trainable_no_op():
    torch.manual_seed(0)
    vdr = AlphaVdR(16, k_hidden=24, h_hidden=12)
    n = 7
    args = (torch.rand(n, 2) * 2 - 1, torch.rand(n), torch.randn(n, 2) * 0.3, torch.randn(n, 16))
    k, h = vdr.coefficients(*args)
    assert k.shape == (n, 3, 4) and h.shape == (n, 4)
    assert k.abs().max() < 1 and h.abs().max() < 1
    assert torch.allclose(vdr.delta(*args), (k @ h[:, :, None])[..., 0], atol=1e-6)
    vdr.zero_output_()
    out = vdr.delta(*args)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert vdr.mlp_k.out.weight.grad.abs().sum() > 0, "K's zeroed head still learns through H"


# -- alpha-guided pixel sampling --------------------------------------------------------------------

def _weights_with_zeros(b=3, p=5, h=12, w=12, threshold=0.1):
    torch.manual_seed(3)
    weights = torch.rand(b, p, 1, h, w)
    weights[torch.rand_like(weights) < 0.5] = 0.0
    weights[0] = 0.0                             # image 0: nothing above threshold except a few
    weights[0, 1, 0, 2, 3:9] = 0.5
    weights[1, :, :, :4] = threshold             # exactly at the threshold: never sampled
    return weights


@pytest.mark.parametrize("fraction, threshold", [(0.6, 0.0), (0.3, 0.1), (1.0, 0.1)])
def test_sample_pairs_fraction_threshold_and_uniqueness(fraction, threshold):
    weights = _weights_with_zeros(threshold=threshold if threshold > 0 else 0.1)
    b, p, _, h, w = weights.shape
    pairs = sample_pairs(weights, fraction, threshold, _seeded(0))
    picked = weights[pairs.batch, pairs.plane, 0, pairs.y, pairs.x]
    assert (picked > threshold).all(), "pairs at or below the threshold (zero weight included) are never sampled"
    eligible = (weights > threshold).sum()
    n = pairs.batch.numel()
    if fraction == 1.0:
        assert n == eligible
    else:  # Bernoulli(fraction) per eligible pair: within 4 binomial standard deviations
        sd = math.sqrt(eligible * fraction * (1 - fraction))
        assert abs(n - fraction * eligible) < 4 * sd, (n, fraction * eligible, sd)
    flat = ((pairs.batch * p + pairs.plane) * h + pairs.y) * w + pairs.x
    assert flat.unique().numel() == flat.numel(), "each pair at most once"
    assert torch.equal(flat, flat.sort().values), "ordered by (image, plane, row, column)"


def test_sample_pairs_fraction_matches_params_on_a_large_set():
    weights = torch.rand(4, 8, 1, 64, 64)
    weights[:, ::2] = 0.0  # half the pairs have zero weight
    for fraction in (0.25, 0.6):
        pairs = sample_pairs(weights, fraction, 0.0, _seeded(7))
        eligible = int((weights > 0).sum())
        share = pairs.batch.numel() / eligible
        sd = math.sqrt(fraction * (1 - fraction) / eligible)
        print(f"fraction {fraction}: sampled share {share:.4f} of {eligible} eligible pairs (sd {sd:.4f})")
        assert abs(share - fraction) < 4 * sd
        assert (pairs.plane % 2 == 1).all()


def test_sample_pairs_is_seeded_and_uniform():
    weights = _weights_with_zeros()
    a, b = sample_pairs(weights, 0.5, 0.0, _seeded(1)), sample_pairs(weights, 0.5, 0.0, _seeded(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = sample_pairs(weights, 0.5, 0.0, _seeded(2))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert sample_pairs(weights, 0.0, 0.0, _seeded(1)).batch.numel() == 0
    # inclusion frequency of every eligible pair ~ fraction, of every other pair 0
    small = torch.zeros(1, 2, 1, 4, 4)
    small[0, 0, 0, :, :2] = 1.0
    small[0, 1, 0, 1:3] = 0.3                     # 16 eligible pairs
    hits, gen, draws = torch.zeros_like(small), _seeded(5), 400
    for _ in range(draws):
        s = sample_pairs(small, 0.5, 0.0, gen)
        hits[s.batch, s.plane, 0, s.y, s.x] += 1
    freq = hits[small > 0] / draws
    assert hits[small == 0].sum() == 0 and (freq - 0.5).abs().max() < 0.12


# -- the generator ---------------------------------------------------------------------------------

def test_view_directions_in_the_canonical_frame():
    k = torch.tensor([[10.0, 0.0, 3.5], [0.0, 10.0, 3.5], [0.0, 0.0, 1.0]])  # pixel (3, 3) on the axis
    canon = pose_to_cam2world(torch.tensor([0.0]), torch.tensor([0.0]))
    yaw = torch.tensor([0.0, 0.3, -0.2])
    cams = pose_to_cam2world(yaw, torch.zeros(3))
    d = canonical_pixel_directions(canon, cams, k, (8, 8))
    assert d.shape == (3, 8, 8, 3)
    assert torch.allclose(d[:, 3, 3], torch.stack([-torch.sin(yaw), torch.zeros(3), torch.cos(yaw)], 1), atol=1e-6)
    # every pixel: the world-space rays of camera.pixel_rays, rotated into the canonical frame
    _, world = pixel_rays(cams, k, 8, 8)
    assert torch.allclose(d, world @ canon[0, :3, :3], atol=1e-6)


def test_disabled_or_zeroed_vdr_reproduces_gmpi_exactly():
    gmpi, gmnr = _pair()
    ws = gmpi.mapping(torch.randn(2, 16), None)
    cams = _cams(4)  # two views per latent
    ref = gmpi.render(ws, cams)
    assert ref["image"].abs().max() <= 1, "GMPI's colours are tanh'd"
    out = gmnr.render(ws, cams, generator=_seeded(0))
    assert out["n_sampled"].min() > 0 and not torch.allclose(out["image"], ref["image"])
    assert torch.equal(out["depth"], ref["depth"]) and torch.equal(out["weights"], ref["weights"])
    gmnr.vdr.zero_output_()
    out = gmnr.render(ws, cams, generator=_seeded(0))
    for key in ("image", "depth", "alpha_acc", "weights", "alpha", "mpi_rgb", "mpi_background", "plane_depths"):
        assert torch.equal(out[key], ref[key]), key
    for vdr in ({"vdr_enabled": False}, {"vdr_fraction": 0.0}):
        _, off = _pair(**vdr)
        out = off.render(ws, cams)
        assert torch.equal(out["image"], ref["image"]) and out["n_sampled"].sum() == 0


def test_vdr_render_equals_dense_per_plane_compositing():
    """Reference: materialise every plane's colour (the shared image on the front planes, the
    background on the last), apply clip(c + KH) at the sampled pairs with the published inputs
    computed independently - uv in texel-centre units from the plane intrinsics, the metric plane
    depth, the world-space ray direction from camera.pixel_rays, w = ws[:, 0] - composite densely."""
    gmpi, gmnr = _pair(resolution=16, planes=5, vdr_fraction=0.5)
    ws = gmnr.mapping(torch.randn(2, 16), None)
    cams = _cams(2)
    out = gmnr.render(ws, cams, generator=_seeded(4))
    mpi = gmnr.synthesize(ws, 5)
    depths = mpi["depths"]
    canon, k = gmnr.canonical_cam2world, gmnr.canonical_intrinsics()
    k_src = gmnr.texture_intrinsics(5)
    grid = _plane_grid(plane_homographies(canon, k_src[None], cams, k, depths), (16, 16), (16, 16))
    alpha_t = _sample_planes(mpi["alpha"], grid)
    colours = torch.cat([mpi["rgb"][:, None].expand(-1, 4, -1, -1, -1), mpi["background"][:, None]], 1)
    rgb01 = (_sample_planes(colours, grid) + 1) / 2
    z, _ = plane_depth_in_target(canon, cams, k, depths, (16, 16))
    _, _, weights = composite(rgb01, alpha_t, z)
    s = sample_pairs(weights, 0.5, 0.0, _seeded(4))
    assert torch.equal(torch.bincount(s.batch, minlength=2), out["n_sampled"])
    _, world = pixel_rays(cams, k, 16, 16)
    omega = (world @ canon[0, :3, :3])[s.batch, s.y, s.x, :2]
    # the texel coordinate the ray hits, (x, y) on plane z = d, in units of the texel-centre span
    rel = torch.linalg.solve(canon.expand(2, 4, 4), cams)
    origin, dirs = rel[:, :3, 3], (world @ canon[0, :3, :3])  # canonical frame
    d = depths[s.plane]
    t = (d - origin[s.batch, 2]) / dirs[s.batch, s.y, s.x, 2]
    hit = origin[s.batch] + t[:, None] * dirs[s.batch, s.y, s.x]
    half = gmnr.plane_half_extents[(s.plane == 4).long()]  # front planes' or background's half extent
    uv = (hit[:, :2] / half).clamp(-1, 1)
    delta = gmnr.vdr.delta(uv, d, omega, ws[s.batch, 0])
    dense = rgb01.clone()
    dense[s.batch, s.plane, :, s.y, s.x] = (dense[s.batch, s.plane, :, s.y, s.x] + delta).clamp(0, 1)
    expected, _, _ = composite(dense * 2 - 1, alpha_t, z)
    assert torch.allclose(out["image"], expected, atol=1e-5)
    changed = (out["image"] != gmpi.render(ws, cams)["image"]).any(1)
    hit_px = torch.zeros_like(changed)
    hit_px[s.batch, s.y, s.x] = True
    assert not (changed & ~hit_px).any(), "only pixels with sampled pairs change"


def test_inference_modes_and_threshold():
    _, gmnr = _pair(resolution=16, planes=4, vdr_threshold=1e-3)
    gmnr.eval()
    ws = gmnr.mapping(torch.randn(1, 16), None)
    with torch.no_grad():
        out = gmnr.render(ws, _cams(1), generator=_seeded(0))  # default: every eligible pair
        assert out["plane_depths"].numel() == 6
        eligible = (out["weights"] > 1e-3).sum(dim=(1, 2, 3, 4))
        assert torch.equal(out["n_sampled"], eligible)
        again = gmnr.render(ws, _cams(1), generator=_seeded(1))
        assert torch.equal(out["image"], again["image"]), "'all' draws nothing: the same frame every time"
        sampled = gmnr.set_inference_vdr("sampled").render(ws, _cams(1), generator=_seeded(0))
        assert 0 < sampled["n_sampled"].item() < eligible.item()
        off = gmnr.set_inference_vdr("off").render(ws, _cams(1))
        gmnr.train()
        assert gmnr.vdr_fraction() == 0.6, "training always samples"
    assert off["n_sampled"].item() == 0
    with pytest.raises(ValueError, match="inference VdR mode"):
        gmnr.set_inference_vdr("sometimes")
    with pytest.raises(ValueError):
        GMNRConfig(**_cfg(), vdr_fraction=1.5)


def test_position_coefficients_on_shared_planes_equal_per_pair_coefficients():
    torch.manual_seed(4)
    vdr = AlphaVdR(16, pos_freqs=3, depth_freqs=2, k_hidden=8, k_layers=2, h_hidden=8, h_layers=1)
    n, depths, w = 50, torch.rand(5), torch.randn(3, 16)
    uv, plane, latent = torch.rand(n, 2) * 2 - 1, torch.randint(0, 5, (n,)), torch.randint(0, 3, (n,))
    k_ref, h_ref = vdr.coefficients(uv, depths[plane], torch.zeros(n, 2), w, latent)
    assert torch.allclose(vdr.position_coefficients(uv, depths, plane, w, latent), k_ref, atol=1e-6)
    assert torch.allclose(vdr.direction_coefficients(torch.zeros(n, 2), w, latent), h_ref, atol=1e-6)


@pytest.mark.parametrize("resolution, planes, w_dim", [(16, 4, 16), (32, 7, 32)])
def test_shapes_and_gradients(resolution, planes, w_dim):
    _, gmnr = _pair(resolution, w_dim, planes)
    cams = _cams(4)
    out = gmnr(torch.randn(2, 16), cams, noise_mode="random", generator=_seeded(0))
    assert out["image"].shape == (4, 3, resolution, resolution)
    assert out["depth"].shape == (4, 1, resolution, resolution)
    assert out["weights"].shape == (4, planes, 1, resolution, resolution)
    assert out["n_sampled"].shape == (4,) and (out["n_sampled"] > 0).all()
    assert torch.isfinite(out["image"]).all()
    (out["image"].square().mean() + out["depth"].mean()).backward()
    missing = [n for n, p in gmnr.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    for name, p in gmnr.vdr.named_parameters():
        assert p.grad.abs().sum() > 0, f"no gradient reaches vdr.{name}"


def test_latents_given_once_with_an_index_equal_latents_given_per_pair():
    """The first-layer factorisation is the same function as the MLP of the concatenation."""
    torch.manual_seed(3)
    vdr = AlphaVdR(16, pos_freqs=3, depth_freqs=2, k_hidden=8, k_layers=2, h_hidden=8, h_layers=1)
    n = 40
    uv, d, omega = torch.rand(n, 2) * 2 - 1, torch.rand(n), torch.rand(n, 2) - 0.5
    w = torch.randn(3, 16)
    index = torch.randint(0, 3, (n,))
    assert torch.allclose(vdr.delta(uv, d, omega, w, index), vdr.delta(uv, d, omega, w[index]), atol=1e-6)
    # and both equal the plain MLP of the concatenated inputs
    k_in = torch.cat([positional_encoding(uv, 3), positional_encoding(d[:, None], 2), w[index]], dim=1)
    assert torch.allclose(vdr.coefficients(uv, d, omega, w, index)[0].reshape(n, 12),
                          _plain_mlp(vdr.mlp_k, k_in), atol=1e-6)


def _plain_mlp(mlp, x):
    for layer in mlp.hidden:
        x = torch.nn.functional.leaky_relu(layer(x), 0.01)
    return torch.tanh(mlp.out(x))


def test_chunked_inference_equals_one_pass(monkeypatch):
    """Without autograd the VdR runs in chunks (bounded memory at 1024 px); same image."""
    _, gmnr = _pair(resolution=16, planes=5, vdr_fraction=0.8)
    ws = gmnr.mapping(torch.randn(2, 16), None)
    cams = _cams(4)
    with torch.no_grad():
        whole = gmnr.render(ws, cams, generator=_seeded(1))
        monkeypatch.setattr(type(gmnr), "INFERENCE_CHUNK", 7)
        chunked = gmnr.render(ws, cams, generator=_seeded(1))
    assert whole["n_sampled"].sum() > 7 * 10, "the test must cover many chunks"
    assert torch.allclose(whole["image"], chunked["image"], atol=1e-6)


# -- baked K (render.vdr: baked) -------------------------------------------------------------------

def test_bilinear_sample_is_grid_sample_with_border_padding():
    from gmnr.models.gmnr import bilinear_sample
    torch.manual_seed(0)
    texture = torch.randn(2, 3, 5, 6, 7)
    n = 200
    coords = torch.rand(n, 2) * 2.6 - 1.3  # inside and outside the texture
    image, plane = torch.randint(0, 2, (n,)), torch.randint(0, 3, (n,))
    got = bilinear_sample(texture, coords, image, plane)
    ref = torch.nn.functional.grid_sample(texture[image, plane], coords[:, None, None, :], mode="bilinear",
                                          padding_mode="border", align_corners=False)[:, :, 0, 0]
    assert torch.allclose(got, ref, atol=1e-5)


def test_texel_mask_holds_every_corner_an_eligible_pair_reads():
    from gmnr.models.gmnr import texel_mask
    from gmnr.render.mpi import _plane_grid, plane_homographies
    _, gmnr = _pair(resolution=16, planes=5)
    gmnr.eval()
    with torch.no_grad():
        mpi = gmnr.synthesize(gmnr.mapping(torch.randn(1, 16), None), 5)
        alpha = torch.zeros_like(mpi["alpha"])
        alpha[:, :, :, 6:9, 5:7] = 0.7  # a small opaque patch: most texels stay out of the mask
        alpha[:, -1] = 1.0
        mask = texel_mask(alpha, 0.05)
        assert 0 < mask[:, :-1].float().mean() < 0.2
        cams = _cams(4)
        out = gmnr.render_mpi({**mpi, "alpha": alpha}, cams)
        grid = _plane_grid(plane_homographies(gmnr.canonical_cam2world, gmnr.texture_intrinsics(5)[None], cams,
                                              gmnr.canonical_intrinsics(), mpi["depths"]), (16, 16), (16, 16))
    b, p, y, x = (out["weights"][:, :, 0] > 0.05).nonzero(as_tuple=True)
    g = grid[b, p, y, x]
    tx, ty = (g[:, 0] + 1) * 8 - 0.5, (g[:, 1] + 1) * 8 - 0.5
    for ox in (0, 1):
        for oy in (0, 1):
            cx, cy = (tx.floor().long() + ox).clamp(0, 15), (ty.floor().long() + oy).clamp(0, 15)
            assert mask[0, p, 0, cy, cx].all()


def _baked_pair(uv_dependent: bool):
    _, gmnr = _pair(resolution=16, planes=5, vdr_threshold=0.01)
    if not uv_dependent:  # K a function of (d, w) only: constant over every texel neighbourhood
        with torch.no_grad():
            gmnr.vdr.mlp_k.hidden[0].weight[:, :4 * gmnr.cfg.vdr_pos_freqs] = 0
    return gmnr.eval()


def test_baked_equals_all_where_k_is_constant_over_the_texels():
    """Bilinear interpolation of a K that does not vary with (u, v) is that K: baked (stored in
    float32 here) renders what `all` renders, pair for pair; with float16 storage within its rounding."""
    import gmnr.models.gmnr as gmnr_module
    gmnr = _baked_pair(uv_dependent=False)
    gmnr.bake_matmul = "float32"  # bfloat16 products: test_bfloat16_bake_is_close_to_float32
    ws = gmnr.mapping(torch.randn(2, 16), None)
    cams = _cams(4)
    with torch.no_grad():
        exact = gmnr.set_inference_vdr("all").render(ws, cams)
        baked = gmnr.set_inference_vdr("baked")
        mpi32 = baked.bake(baked.synthesize(ws, 7), dtype=torch.float32)
        got = baked.render_mpi(mpi32, cams)
        half = baked.render(ws, cams)  # float16 K, baked inside render_mpi
    assert torch.equal(got["n_sampled"], exact["n_sampled"]) and exact["n_sampled"].sum() > 100
    assert torch.allclose(got["image"], exact["image"], atol=1e-5)
    assert (half["image"] - exact["image"]).abs().max() < 2 * 4 * 2.5e-4 * 2  # |dK| <= 2^-12 per entry, |H| <= 1
    assert gmnr_module.BAKED_DTYPE == torch.float16


def test_bfloat16_bake_is_close_to_float32_and_auto_uses_it_where_the_device_is_fast(monkeypatch):
    """K's products in bfloat16 (8-bit mantissa inputs, float32 sums) move K by a few 2^-9 of its
    scale, not more, and every texel is still computed; "auto" picks bfloat16 exactly when
    fast_bfloat16 says the device multiplies it natively."""
    import gmnr.models.gmnr as gmnr_module
    gmnr = _baked_pair(uv_dependent=True).set_inference_vdr("baked")
    with torch.no_grad():
        mpi = gmnr.synthesize(gmnr.mapping(torch.randn(2, 16), None), 5)
        bakes = {}
        for mode, fast in (("float32", True), ("bfloat16", False), ("auto", True), ("auto", False)):
            monkeypatch.setattr(gmnr_module, "fast_bfloat16", lambda device, fast=fast: fast)
            gmnr.bake_matmul = mode
            bakes[mode, fast] = gmnr.bake(mpi, torch.float32, eager=True)
    reference = bakes["float32", True]["baked_k"]
    err = (bakes["bfloat16", False]["baked_k"] - reference).abs()
    assert 0 < err.max() < 0.01 and err.max() < 0.05 * reference.abs().max()
    assert torch.equal(bakes["auto", True]["baked_k"], bakes["bfloat16", False]["baked_k"])
    assert torch.equal(bakes["auto", False]["baked_k"], reference)
    gmnr.bake_matmul = "float16"
    with pytest.raises(ValueError, match="bake_matmul"):
        gmnr.bake(mpi, eager=True)


def test_baked_is_close_to_all_and_bakes_once_per_mpi(monkeypatch):
    gmnr = _baked_pair(uv_dependent=True)
    ws = gmnr.mapping(torch.randn(1, 16), None)
    cams = _cams(4)
    with torch.no_grad():
        exact = gmnr.set_inference_vdr("all").render(ws, cams)
        gmnr.set_inference_vdr("baked")
        mpi = gmnr.bake(gmnr.synthesize(ws, 7))
        calls = []
        monkeypatch.setattr(gmnr, "bake", lambda *a, **k: calls.append(1))
        frames = torch.cat([gmnr.render_mpi(mpi, cams[i:i + 1])["image"] for i in range(4)])
        off = gmnr.set_inference_vdr("off").render(ws, cams)
    assert not calls, "a baked MPI is not baked again per view"
    err = (frames - exact["image"]).abs()
    vdr = (exact["image"] - off["image"]).abs()
    assert 0 < err.max() < 0.5 * vdr.max(), "interpolated K: close to the exact one, not equal"


def test_chunked_bake_equals_one_pass(monkeypatch):
    gmnr = _baked_pair(uv_dependent=True).set_inference_vdr("baked")
    with torch.no_grad():
        mpi = gmnr.synthesize(gmnr.mapping(torch.randn(2, 16), None), 5)
        whole = gmnr.bake(mpi, torch.float32, eager=True)["baked_k"]
        monkeypatch.setattr(type(gmnr), "INFERENCE_CHUNK", 13)
        chunked = gmnr.bake(mpi, torch.float32, eager=True)["baked_k"]
    assert (whole != 0).sum() > 13 * 20
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_baked_frame_in_chunks_equals_one_pass(monkeypatch):
    """A baked frame's pairs go through the correction in chunks of BAKED_PAIR_CHUNK (not MLP_K's
    INFERENCE_CHUNK: no MLP runs per pair); many chunks render the same image as one."""
    gmnr = _baked_pair(uv_dependent=True).set_inference_vdr("baked")
    ws = gmnr.mapping(torch.randn(2, 16), None)
    cams = _cams(4)
    with torch.no_grad():
        whole = gmnr.render(ws, cams)
        monkeypatch.setattr(type(gmnr), "BAKED_PAIR_CHUNK", 7)
        chunked = gmnr.render(ws, cams)
    assert whole["n_sampled"].sum() > 7 * 10, "the test must cover many chunks"
    assert torch.allclose(whole["image"], chunked["image"], atol=1e-6)


def test_bake_is_lazy_and_eager_bake_fills_the_texel_mask():
    from gmnr.models.gmnr import texel_mask
    gmnr = _baked_pair(uv_dependent=True).set_inference_vdr("baked")
    with torch.no_grad():
        mpi = gmnr.synthesize(gmnr.mapping(torch.randn(2, 16), None), 5)
        lazy, eager = gmnr.bake(mpi), gmnr.bake(mpi, eager=True)
    assert lazy["baked_k"].shape == (2, 5, 12, 16, 16) and lazy["baked_k"].dtype == torch.float16
    assert not lazy["baked_mask"].any() and not lazy["baked_k"].any(), "bake() only allocates the cache"
    assert torch.equal(eager["baked_mask"], texel_mask(mpi["alpha"], 0.01)[:, :, 0])
    assert ((eager["baked_k"] != 0).any(2) <= eager["baked_mask"]).all()


def _sweep(n: int):
    yaw = torch.linspace(-0.35, 0.35, n)
    return pose_to_cam2world(yaw, 0.05 * torch.sin(torch.arange(n) * 1.3))


def test_lazy_baked_frames_equal_eager_baked_frames():
    """Computing K on demand changes what is computed when, not what: the frames of a sweep rendered
    from one lazily baked MPI (one view per call, as a video renders, then all at once) equal the
    eagerly baked ones bit for bit, and so does every texel the lazy cache computed, even one at a
    time (a batch of 1-3 rows can take another matrix-product path: bake_texels pads it)."""
    gmnr = _baked_pair(uv_dependent=True).set_inference_vdr("baked")
    cams = _sweep(6)
    with torch.no_grad():
        mpi = gmnr.synthesize(gmnr.mapping(torch.randn(1, 16), None), 7)
        lazy, eager = gmnr.bake(mpi), gmnr.bake(mpi, eager=True)
        for i in range(6):
            got, want = gmnr.render_mpi(lazy, cams[i:i + 1]), gmnr.render_mpi(eager, cams[i:i + 1])
            assert got["n_sampled"].sum() > 50
            assert torch.equal(got["image"], want["image"]), f"view {i}"
        assert torch.equal(gmnr.render_mpi(gmnr.bake(mpi), cams)["image"], gmnr.render_mpi(eager, cams)["image"])
        one_by_one = gmnr.bake(mpi)
        texels = lazy["baked_mask"].nonzero()[::37]
        for t in texels:
            assert gmnr.bake_texels(one_by_one, *t[:, None]) == 1
        assert gmnr.bake_texels(one_by_one, *texels.t()) == 0, "computed texels are not computed again"
    done = lazy["baked_mask"][:, :, None].expand_as(lazy["baked_k"])
    assert torch.equal(lazy["baked_k"][done], eager["baked_k"][done])
    assert not lazy["baked_k"][~done].any()
    b, p, y, x = texels.t()
    assert torch.equal(one_by_one["baked_k"][b, p, :, y, x], eager["baked_k"][b, p, :, y, x])


def test_lazy_bake_computes_only_the_texels_the_views_read():
    """A sweep's pairs read fewer texels than texel_mask holds (it holds every texel any view could
    read), and every corner a rendered pair reads is in the lazy cache."""
    from gmnr.models.gmnr import bilinear_corners, texel_mask
    gmnr = _baked_pair(uv_dependent=True).set_inference_vdr("baked")
    cams = _sweep(8)
    with torch.no_grad():
        mpi = gmnr.synthesize(gmnr.mapping(torch.randn(1, 16), None), 7)
        lazy = gmnr.bake(mpi)
        outs = [gmnr.render_mpi(lazy, cams[i:i + 1]) for i in range(8)]
        grid = _plane_grid(plane_homographies(gmnr.canonical_cam2world, gmnr.texture_intrinsics(7)[None], cams,
                                              gmnr.canonical_intrinsics(), mpi["depths"]), (16, 16), (16, 16))
    weights = torch.cat([o["weights"] for o in outs])
    b, p, y, x = (weights[:, :, 0] > gmnr.cfg.vdr_threshold).nonzero(as_tuple=True)
    x0, y0, _, _ = bilinear_corners(grid[b, p, y, x], 16, 16)
    for dy in (0, 1):
        for dx in (0, 1):
            assert lazy["baked_mask"][0, p, y0 + dy, x0 + dx].all()
    computed, eager = int(lazy["baked_mask"].sum()), int(texel_mask(mpi["alpha"], gmnr.cfg.vdr_threshold).sum())
    assert 0 < computed < eager, (computed, eager)


def test_bake_texels_one_at_a_time_equals_eager_at_published_width():
    """MLP_K at its published width (784, 3 hidden layers), K stored in float32: texels computed one
    per call (a late frame of a video may need a single new texel) equal the eager bake's in every bit."""
    _, gmnr = _pair(resolution=16, planes=5, vdr_threshold=0.01, vdr_k_hidden=784, vdr_k_layers=3)
    gmnr.eval().set_inference_vdr("baked")
    with torch.no_grad():
        mpi = gmnr.synthesize(gmnr.mapping(torch.randn(1, 16), None), 5)
        eager = gmnr.bake(mpi, torch.float32, eager=True)
        lazy = gmnr.bake(mpi, torch.float32)
        texels = eager["baked_mask"].nonzero()[::29]
        for t in texels:
            gmnr.bake_texels(lazy, *t[:, None])
    b, p, y, x = texels.t()
    assert texels.shape[0] > 20 and torch.equal(lazy["baked_mask"].sum(), torch.tensor(texels.shape[0]))
    assert torch.equal(lazy["baked_k"][b, p, :, y, x], eager["baked_k"][b, p, :, y, x])


def test_bake_texels_of_bilinear_corners_computes_the_four_texels_each_sample_reads():
    """``corners=True`` names each bilinear sample by its top-left texel: the texel, its right, lower
    and lower-right neighbours are computed, the same values as naming the four explicitly, and no other."""
    gmnr = _baked_pair(uv_dependent=True).set_inference_vdr("baked")
    with torch.no_grad():
        mpi = gmnr.synthesize(gmnr.mapping(torch.randn(2, 16), None), 5)
        by_corner, explicit = gmnr.bake(mpi), gmnr.bake(mpi)
        latent, plane, row, col = torch.tensor([0, 1, 1]), torch.tensor([4, 0, 0]), torch.tensor([0, 7, 8]), \
            torch.tensor([14, 3, 3])  # the last two samples share two texels: 10 distinct ones
        assert gmnr.bake_texels(by_corner, latent, plane, row, col, corners=True) == 10
        four = [torch.cat(t) for t in ([latent] * 4, [plane] * 4, [row, row, row + 1, row + 1], [col, col + 1, col, col + 1])]
        assert gmnr.bake_texels(explicit, *four) == 10
    assert torch.equal(by_corner["baked_mask"], explicit["baked_mask"]) and int(by_corner["baked_mask"].sum()) == 10
    assert by_corner["baked_mask"][0, 4, 1, 15] and by_corner["baked_mask"][1, 0, 9, 4]
    assert torch.equal(by_corner["baked_k"], explicit["baked_k"])


def test_mlp_k_cost_per_texel_in_the_bound_benchmark_matches_torchs_flop_counter():
    """benchmarks/vdr_k_bound.py's floor rests on MLP_K's multiply-adds per texel; torch's own FLOP
    counter over position_coefficients, differenced between two texel counts (the shared (depth, w)
    part of the first layer cancels), must give the same at the published sizes."""
    import importlib.util
    from pathlib import Path

    from torch.utils.flop_counter import FlopCounterMode
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "vdr_k_bound.py"
    spec = importlib.util.spec_from_file_location("vdr_k_bound", path)
    bound = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bound)
    vdr = AlphaVdR(512)  # published: pos_freqs 10, MLP_K 3 x 784
    w, depths = torch.randn(1, 512), torch.linspace(1.0, 1.1, 4)

    def flops(n: int) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            vdr.position_coefficients(torch.rand(n, 2) * 2 - 1, depths, torch.arange(n) % 4, w,
                                      torch.zeros(n, dtype=torch.long))
        return counter.get_total_flops()
    per_texel = (flops(96) - flops(32)) / 64
    assert per_texel == 2 * bound.mlp_k_macs_per_texel(vdr)
    assert per_texel == 2 * (40 * 784 + 784 * 784 * 2 + 784 * 12)  # 2.54 MFLOP


@pytest.mark.parametrize("tail", [5, 20])
def test_mlp_in_row_slices_on_a_cpu_equals_one_pass(monkeypatch, tail):
    """Without autograd on a CPU, CoefficientMLP runs its rows in slices of CPU_ROWS (faster: the
    activations stay in cache); the slices, a short tail merged or not, give the one pass's values
    bit for bit, and with autograd nothing is sliced."""
    from gmnr.models.gmnr import CoefficientMLP
    torch.manual_seed(0)
    vdr = AlphaVdR(64, k_hidden=96)
    n = 3 * 64 + tail
    uv, plane = torch.rand(n, 2) * 2 - 1, torch.randint(0, 4, (n,))
    latent, w, depths = torch.randint(0, 2, (n,)), torch.randn(2, 64), torch.linspace(1.0, 1.1, 4)
    calls = []
    rows = CoefficientMLP._rows

    def counted(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return rows(self, x, *args, **kwargs)
    monkeypatch.setattr(CoefficientMLP, "_rows", counted)
    with torch.no_grad():
        monkeypatch.setattr(CoefficientMLP, "CPU_ROWS", 1 << 20)
        whole = vdr.position_coefficients(uv, depths, plane, w, latent)
        monkeypatch.setattr(CoefficientMLP, "CPU_ROWS", 64)
        calls.clear()
        sliced = vdr.position_coefficients(uv, depths, plane, w, latent)
    assert calls == ([64, 64, 64 + tail] if tail < CoefficientMLP.MIN_ROWS else [64, 64, 64, tail])
    assert torch.equal(sliced, whole)
    calls.clear()
    vdr.position_coefficients(uv, depths, plane, w, latent)  # autograd records: one pass
    assert calls == [n]
