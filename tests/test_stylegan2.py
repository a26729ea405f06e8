"""StyleGAN2 building blocks and networks (gmnr.models.stylegan2), on tiny CPU-sized nets."""
import math

import pytest
import torch
import torch.nn.functional as F

from gmnr.models.stylegan2 import (Discriminator, Generator, MappingNetwork, SynthesisNetwork, conv2d_resample,
                                   downsample2d, modulated_conv2d, setup_filter, upfirdn2d, upsample2d)

SMALL = dict(channel_base=128, channel_max=16)


def tiny_generator(res=16, w_dim=8, c_dim=0, seed=0, **synthesis):
    torch.manual_seed(seed)
    return Generator(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=res, img_channels=3,
                     mapping_kwargs=dict(num_layers=2), synthesis_kwargs={**SMALL, **synthesis})


def tiny_discriminator(res=16, c_dim=16, seed=0):
    torch.manual_seed(seed)
    return Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3,
                         **SMALL)


def set_noise_strength(G, value=0.5):
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(value)


# --- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("res,w_dim", [(16, 8), (32, 12)])
def test_generator_shapes_and_features(res, w_dim):
    G = tiny_generator(res, w_dim).eval()
    syn = G.synthesis
    log2 = int(math.log2(res))
    assert syn.block_resolutions == [2 ** i for i in range(2, log2 + 1)]
    assert G.num_ws == syn.num_ws == 2 * log2 - 2
    assert syn.channels_dict == {r: min(128 // r, 16) for r in syn.block_resolutions}

    z = torch.randn(2, w_dim)
    ws = G.mapping(z, None)
    assert ws.shape == (2, G.num_ws, w_dim)
    img, feats = syn(ws, return_features=True)
    assert img.shape == (2, 3, res, res)
    assert list(feats) == syn.block_resolutions
    for r, x in feats.items():
        assert x.shape == (2, syn.channels_dict[r], r, r)

    # Per-block ws slicing: blocks overlap by one style (torgb of r == conv0 of 2r).
    slices = syn.split_ws(ws)
    assert slices[4].shape[1] == 2 and all(slices[r].shape[1] == 3 for r in syn.block_resolutions[1:])
    assert syn.ws_slices[8][0] == 1 and syn.ws_slices[res][0] + 3 == syn.num_ws


def test_shape_errors_are_readable():
    G = tiny_generator()
    with pytest.raises(ValueError, match=r"ws \[B, num_ws, w_dim\].*expected shape \[\*, 6, 8\]"):
        G.synthesis(torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="power of two"):
        SynthesisNetwork(w_dim=8, img_resolution=24, **SMALL)
    D = tiny_discriminator()
    with pytest.raises(ValueError, match=r"Discriminator c \[B, c_dim\]"):
        D(torch.randn(2, 3, 16, 16), torch.randn(2, 15))


# --- modulated convolution ----------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_modconv_with_unit_styles_is_plain_conv(fused):
    torch.manual_seed(0)
    x, w = torch.randn(3, 4, 7, 7), torch.randn(5, 4, 3, 3)
    out = modulated_conv2d(x, w, torch.ones(3, 4), padding=1, demodulate=False, fused_modconv=fused)
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)


def test_fused_and_unfused_modconv_agree_with_upsampling():
    torch.manual_seed(0)
    x, w, s = torch.randn(2, 4, 5, 5), torch.randn(6, 4, 3, 3), torch.randn(2, 4)
    f = setup_filter()
    a = modulated_conv2d(x, w, s, up=2, padding=1, resample_filter=f, flip_weight=False, fused_modconv=True)
    b = modulated_conv2d(x, w, s, up=2, padding=1, resample_filter=f, flip_weight=False, fused_modconv=False)
    assert a.shape == (2, 6, 10, 10)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_demodulation_gives_unit_norm_effective_weights():
    """Read each sample's effective kernel off the responses to basis images: after
    demodulation every output channel's kernel has unit L2 norm, whatever the style scale."""
    torch.manual_seed(0)
    cin, cout, k = 3, 5, 3
    w = torch.randn(cout, cin, k, k)
    basis = torch.eye(cin * k * k).reshape(cin * k * k, cin, k, k)
    for scale in (0.01, 1.0, 100.0):
        style = torch.randn(1, cin) * scale
        out = modulated_conv2d(basis, w, style.expand(len(basis), cin), padding=0, demodulate=True)
        effective = out.reshape(len(basis), cout)  # [cin*k*k, cout]
        torch.testing.assert_close(effective.square().sum(0), torch.ones(cout), rtol=1e-4, atol=1e-4)


def test_upsampling_conv_matches_reference_definition():
    """Fast transposed-conv path == zero insertion + pad + FIR(gain 4) + true convolution, the
    definition the pretrained up-sampling layers were trained with."""
    torch.manual_seed(0)
    x, w, f = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), setup_filter()
    ref = F.conv2d(upfirdn2d(x, f, up=2, padding=[3, 2, 3, 2], gain=4), w.flip([2, 3]))
    torch.testing.assert_close(conv2d_resample(x, w, f, up=2, padding=1, flip_weight=False), ref,
                               rtol=1e-5, atol=1e-5)
    x8 = torch.randn(2, 3, 8, 8)
    ref = upfirdn2d(F.conv2d(F.pad(x8, [2, 2, 2, 2]), w), f, down=2)
    torch.testing.assert_close(conv2d_resample(x8, w, f, down=2, padding=1), ref, rtol=1e-5, atol=1e-5)


# --- FIR resampling -----------------------------------------------------------------------------

def test_fir_filter_sums_to_gain():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4)
    assert torch.isclose(f.sum(), torch.tensor(1.0))
    delta = torch.zeros(1, 1, 9, 9)
    delta[..., 4, 4] = 1
    assert torch.isclose(upfirdn2d(delta, f, padding=3, gain=2.5).sum(), torch.tensor(2.5))
    up = upsample2d(delta, f)
    # Each of the 4 polyphase components carries unit mass, i.e. the up**2 gain is exact.
    for dy in (0, 1):
        for dx in (0, 1):
            assert torch.isclose(up[..., dy::2, dx::2].sum(), torch.tensor(1.0))


def test_resampling_constant_and_smooth_images():
    f = setup_filter()
    const = torch.full((1, 2, 8, 8), 3.0)
    up = upsample2d(const, f)
    assert up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.0))
    down = downsample2d(const, f)
    assert down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 3.0))

    n = 32
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    smooth = (torch.sin(2 * math.pi * xx / n) * torch.cos(2 * math.pi * yy / n))[None, None].float()
    back = downsample2d(upsample2d(smooth, f), f)
    assert back.shape == smooth.shape
    assert (back - smooth)[..., 4:-4, 4:-4].abs().max() < 0.03  # no half-pixel shift, little blur


# --- mapping, noise -----------------------------------------------------------------------------

def test_truncation_and_w_avg_tracking():
    torch.manual_seed(0)
    M = MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=4, num_layers=2)
    z = torch.randn(5, 8)
    M.train()
    M(z, None)
    assert M.w_avg.abs().sum() > 0  # moved from its zero initialisation
    M.eval()
    with torch.no_grad():
        M.w_avg.copy_(torch.randn(8))
    w_full = M(z, None)
    w0 = M(z, None, truncation_psi=0)
    torch.testing.assert_close(w0, M.w_avg.expand(5, 4, 8))
    w_cut = M(z, None, truncation_psi=0, truncation_cutoff=2)
    torch.testing.assert_close(w_cut[:, :2], M.w_avg.expand(5, 2, 8))
    torch.testing.assert_close(w_cut[:, 2:], w_full[:, 2:])


def test_noise_modes():
    G = tiny_generator().eval()
    set_noise_strength(G)
    ws = G.mapping(torch.randn(2, 8), None)
    with torch.no_grad():
        const_a, const_b = G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const")
        rand_a, rand_b = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
        none = G.synthesis(ws, noise_mode="none")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(rand_a, rand_b)
    assert not torch.allclose(none, const_a)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="bogus")


# --- training-relevant behaviour ----------------------------------------------------------------

def test_gradients_reach_every_parameter():
    G, D = tiny_generator(res=16).train(), tiny_discriminator(res=16).train()
    torch.manual_seed(1)
    img = G(torch.randn(4, 8), None, noise_mode="random")
    logits = D(img, torch.randn(4, 16))
    (logits.sum() + (img * torch.randn_like(img)).sum()).backward()
    for net in (G, D):
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {type(net).__name__}.{name}"


def test_discriminator_is_conditioned_on_camera():
    D = tiny_discriminator().eval()
    img = torch.randn(4, 3, 16, 16)
    c1, c2 = torch.randn(4, 16), torch.randn(4, 16)
    with torch.no_grad():
        l1, l1b, l2 = D(img, c1), D(img, c1), D(img, c2)
    assert l1.shape == (4, 1)
    assert torch.equal(l1, l1b)
    assert torch.allclose(l1, l2, atol=1e-6), "the label projection starts neutral: the same logit for every camera"
    (D(img, c1).sum()).backward()
    assert D.mapping.linear.weight.grad.abs().sum() > 0, "yet the camera dependence receives gradient at once"
    with torch.no_grad():
        D.mapping.linear.weight.normal_()  # as after training
        assert not torch.allclose(D(img, c1), D(img, c2))
    assert Discriminator(c_dim=0, img_resolution=16, img_channels=3, **SMALL)(img, None).shape == (4, 1)


def test_label_projection_is_one_linear_layer_normalised():
    """GMPI: flattened camera -> nn.Linear(16, 16) -> normalize_2nd_moment; the neutral start embedding
    has mean square 1 and sum sqrt(k), so (row * n).sum() / sqrt(k) returns the row's logit."""
    from gmnr.models.stylegan2 import LabelProjection
    for k in (1, 2, 16, 33):
        n = LabelProjection.neutral_embedding(k)
        assert torch.allclose(n.square().mean(), torch.tensor(1.0), atol=1e-6)
        assert torch.allclose(n.sum() / k ** 0.5, torch.tensor(1.0), atol=1e-6)
    proj = LabelProjection(16, 16)
    with torch.no_grad():
        proj.linear.weight.normal_()
    c = torch.randn(5, 16)
    expected = proj.linear(c)
    expected = expected / expected.square().mean(1, keepdim=True).add(1e-8).sqrt()
    assert torch.allclose(proj(c), expected, atol=1e-6)
    assert [type(m).__name__ for m in proj.modules()] == ["LabelProjection", "Linear"]


# --- NVlabs names -------------------------------------------------------------------------------

def _layer(prefix, noise_res=None):
    keys = {f"{prefix}.weight", f"{prefix}.bias", f"{prefix}.affine.weight", f"{prefix}.affine.bias"}
    if noise_res is not None:
        keys |= {f"{prefix}.resample_filter", f"{prefix}.noise_const", f"{prefix}.noise_strength"}
    return keys


def test_generator_names_and_shapes_follow_nvlabs():
    G = tiny_generator(res=8, w_dim=8)
    sd = G.state_dict()
    expected = {"mapping.w_avg", "mapping.fc0.weight", "mapping.fc0.bias", "mapping.fc1.weight", "mapping.fc1.bias",
                "synthesis.b4.const", "synthesis.b4.resample_filter", "synthesis.b8.resample_filter"}
    expected |= _layer("synthesis.b4.conv1", 4) | _layer("synthesis.b4.torgb")
    expected |= _layer("synthesis.b8.conv0", 8) | _layer("synthesis.b8.conv1", 8) | _layer("synthesis.b8.torgb")
    assert set(sd) == expected
    c4, c8 = G.synthesis.channels_dict[4], G.synthesis.channels_dict[8]
    assert sd["synthesis.b4.const"].shape == (c4, 4, 4)
    assert sd["synthesis.b8.conv0.weight"].shape == (c8, c4, 3, 3)
    assert sd["synthesis.b8.conv0.noise_const"].shape == (8, 8)
    assert sd["synthesis.b8.conv0.noise_strength"].shape == ()
    assert sd["synthesis.b8.torgb.weight"].shape == (3, c8, 1, 1)
    assert sd["synthesis.b8.torgb.affine.bias"].shape == (c8,)
    assert sd["synthesis.b8.resample_filter"].shape == (4, 4)
    assert sd["mapping.fc0.weight"].shape == (8, 8)


def test_discriminator_names_follow_nvlabs():
    D = tiny_discriminator(res=16, c_dim=16)
    sd = D.state_dict()
    conv = lambda p: {f"{p}.weight", f"{p}.bias", f"{p}.resample_filter"}  # noqa: E731
    expected = {"b16.resample_filter", "b8.resample_filter"} | conv("b16.fromrgb")
    for r in (16, 8):
        expected |= conv(f"b{r}.conv0") | conv(f"b{r}.conv1") | {f"b{r}.skip.weight", f"b{r}.skip.resample_filter"}
    expected |= {"b4.conv.weight", "b4.conv.bias", "b4.conv.resample_filter", "b4.fc.weight", "b4.fc.bias",
                 "b4.out.weight", "b4.out.bias", "mapping.linear.weight", "mapping.linear.bias"}
    assert set(sd) == expected
    cmap = D.channels_dict[4]
    assert sd["mapping.linear.weight"].shape == (cmap, 16)
    assert sd["b4.out.weight"].shape == (cmap, D.channels_dict[4])
    assert sd["b4.conv.weight"].shape == (D.channels_dict[4], D.channels_dict[4] + 1, 3, 3)
