"""GMNR generator (Kumar et al., ICCV 2023): GMPI plus an alpha-guided view-dependent colour term.

GMPI renders planes whose colour does not depend on the viewing direction. GMNR adds, for a
random subset of the (plane, target pixel) pairs that contribute to the image,

    c' = clip(c + K H, 0, 1),
    K = tanh(MLP_K([gamma(u), gamma(v), gamma(d), w]))      (3 x 4, position coefficients)
    H = tanh(MLP_H([gamma'(omega_x), gamma'(omega_y), w]))   (4,   direction coefficients)

as the published code has it (VIROBO-15/GMNR ``gmnr/models/networks/networks_cond_on_pos_enc.py:
RefineNetworkforrgb.forward``, ``gmnr/model_new/network.py:Basis``, ``gmnr/model_new/mlp.py``):
(u, v) is the plane texture coordinate the pixel's ray hits, in grid_sample's align_corners=True
units ([-1, 1] over the plane's texel centres), encoded with frequencies 0.5 pi 2^k, k < 10; d the
plane's metric depth with 0.5 pi 2^k, k < 8; (omega_x, omega_y) the x, y of the unit world-space
ray direction (GMPI's world frame is the canonical camera's) with {1, 2, 4} pi / 2; w the latent
(``ws[:, 0]``). Both MLPs are plain ``nn.Linear`` layers with leaky ReLU 0.01. The pairs are drawn
by *alpha-guided pixel sampling*: each pair whose compositing weight exceeds a threshold (0:
"non-zero") is kept with probability ``vdr_fraction`` (60 % published; the published code draws
that many pairs with replacement, here without: no pair is counted twice).

Where the cost goes, and how it is kept down without changing the function:
- H depends on the pixel's ray only, and a ray has one direction for every plane it crosses, so
  MLP_H runs once per target pixel and each pair gathers its pixel's H.
- MLP_K's first layer is linear, so the parts of its input shared by many pairs (gamma(d) of the
  plane, w of the latent) are multiplied once per (plane, latent) and gathered; per pair only
  gamma(u), gamma(v) go through the first layer. The hidden layers run on the sampled pairs only.
- The weights depend on alpha only, so the view-dependent colour enters the image as a sparse
  correction ``sum_{sampled} w_i (c'_i - c_i)`` scattered back pair by pair: no per-plane colour
  tensor beyond GMPI's own is materialised.

At inference (``eval()``) the pairs follow ``GMNRGenerator.inference_vdr``: ``all`` eligible
pairs (deterministic: a video does not flicker), the training-time random ``sampled`` subset, or
``off`` (no view-dependent colour; how the published code renders its FID images and videos).

Everything else - the StyleGAN2 backbone, the alpha branch, the background plane, the plane
extents, the homography warp and the compositing - is GMPI's (:class:`GMNRGenerator` subclasses
:class:`GMPIGenerator`). Shapes follow the config (resolution, planes, w_dim, encodings); none is
hard-coded (the published modules hard-code 256 px, 32 planes and 512-d w).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn

from gmnr.models.gmpi import GMPIConfig, GMPIGenerator
from gmnr.render.mpi import pixel_centres, relative_pose

Tensor = torch.Tensor

LEAKY_SLOPE = 0.01


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# Gathers go through index_select: its backward is index_add, which is deterministic and fast on
# the CPU. Advanced indexing (t[i, j]) backpropagates through index_put(accumulate=True), which
# under torch.use_deterministic_algorithms falls back to a sort on the CPU (a third of a GMNR
# step at the demo size before this was changed).

def gather_rows(t: Tensor, index: Tensor) -> Tensor:
    """``t[index]`` along the first dimension (index [N] -> [N, ...])."""
    return t.index_select(0, index)


def gather_pairs(t: Tensor, pairs: "SampledPairs") -> Tensor:
    """Values of a per-plane tensor t [B, P, C, H, W] (any memory layout) at the pairs -> [N, C]."""
    _require(t.ndim == 5, f"gather_pairs expects [B, P, C, H, W], got {tuple(t.shape)}")
    order = sorted(range(5), key=lambda d: -t.stride(d))
    dense = t.permute(order)
    if not dense.is_contiguous():  # overlapping or padded layout: make one (rare)
        t = t.contiguous()
        dense = t
    stride = t.stride()
    base = (pairs.batch * stride[0] + pairs.plane * stride[1] + pairs.y * stride[3] + pairs.x * stride[4])
    offsets = base[:, None] + torch.arange(t.shape[2], device=t.device) * stride[2]  # [N, C]
    return dense.reshape(-1).index_select(0, offsets.reshape(-1)).view(-1, t.shape[2])


# --------------------------------------------------------------------------------------------
# Encodings
# --------------------------------------------------------------------------------------------

def frequency_encoding(x: Tensor, freqs: Sequence[float] | Tensor) -> Tensor:
    """sin/cos of ``f * x`` for every frequency f: [..., D] -> [..., D * 2 * len(freqs)].

    Layout is dimension-major, so encoding a stack of inputs equals concatenating their encodings
    (``enc([u, v]) == cat(enc(u), enc(v))``); within one input dimension the features are
    ``sin(f_0 x), cos(f_0 x), sin(f_1 x), cos(f_1 x), ...`` (NeRF's order). No identity term.
    """
    f = torch.as_tensor(freqs, dtype=x.dtype, device=x.device).reshape(-1)
    _require(f.numel() >= 1, "frequency_encoding needs at least one frequency")
    angles = x[..., None] * f  # [..., D, L]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-3)


def positional_encoding(x: Tensor, n_freqs: int, scale: float = math.pi / 2) -> Tensor:
    """Positional encoding gamma_L: sin/cos of ``2^k * scale * x``, k = 0..L-1 (GMNR's scale is
    pi / 2: ``0.5 * np.pi * (2 ** i)`` for uv and depth). [..., D] -> [..., D * 2 * n_freqs]."""
    _require(int(n_freqs) == n_freqs and n_freqs >= 1, f"n_freqs must be an integer >= 1, got {n_freqs}")
    return frequency_encoding(x, [scale * 2.0 ** k for k in range(int(n_freqs))])


def direction_encoding(x: Tensor, freqs: Sequence[float] = (1, 2, 4), scale: float = math.pi / 2) -> Tensor:
    """GMNR's direction encoding gamma': sin/cos of ``f * scale * x`` for f in ``freqs``
    (published: {1, 2, 4} * pi / 2). [..., D] -> [..., D * 2 * len(freqs)]."""
    return frequency_encoding(x, [scale * float(f) for f in freqs])


# --------------------------------------------------------------------------------------------
# alpha-VdR
# --------------------------------------------------------------------------------------------

class CoefficientMLP(nn.Module):
    """``n_hidden`` plain ``nn.Linear`` layers of width ``hidden`` with leaky ReLU (slope 0.01), then a
    linear output layer followed by tanh (GMNR's ``VanillaMLP`` / ``ReluMLP`` and the tanh of
    ``Basis``; PyTorch's default initialisation, no equalised learning rate)."""

    # Rows per slice on a CPU without autograd: MLP_K's 784-wide activations of 65,536 rows (205 MB) leave the
    # cache between layers; in slices of 1,024-2,048 rows its products ran at 125-136 GFLOP/s against 59-81 in
    # one (2 AVX2 threads, published sizes; docs/benchmarks.md). A GPU takes whole chunks.
    CPU_ROWS = 2048
    MIN_ROWS = 16

    def __init__(self, in_features: int, hidden: int, n_hidden: int, out_features: int):
        super().__init__()
        _require(n_hidden >= 0 and hidden >= 1, f"need hidden >= 1 and n_hidden >= 0, got {hidden}, {n_hidden}")
        widths = [in_features] + [hidden] * n_hidden
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], out_features)

    @property
    def dims(self) -> list[int]:
        return [layer.in_features for layer in self.hidden] + [self.out.in_features, self.out.out_features]

    def forward(self, x: Tensor, shared: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        """MLP of ``cat([x, shared[index]])`` (or of ``x`` alone when ``shared`` is None).

        The first layer is linear in its input, so the ``shared`` part (the latent w, the same for
        every pair of one image) is multiplied once per latent and gathered, instead of once per
        pair: the same function at a fraction of the cost (w is 512 of MLP_K's 568 inputs).

        Without autograd on a CPU the rows go through in slices of :attr:`CPU_ROWS` (each row's result is
        its own: the same function); the shared part is projected once for all of them.
        """
        first = (list(self.hidden) + [self.out])[0]
        projected = None
        if shared is not None:
            _require(index is not None and index.shape == (x.shape[0],),
                     f"shared inputs need an index [N] = [{x.shape[0]}], got {None if index is None else tuple(index.shape)}")
            f = x.shape[1]
            _require(f + shared.shape[1] == first.in_features,
                     f"inputs {f} + {shared.shape[1]} must add up to {first.in_features}")
            projected = shared.to(x.dtype) @ first.weight.to(x.dtype)[:, f:].t()  # once, for every slice
        n = x.shape[0]
        if n > self.CPU_ROWS + self.MIN_ROWS and x.device.type == "cpu" and not torch.is_grad_enabled():
            # the last slice keeps >= MIN_ROWS rows: a product of 1-3 rows can take another path (last bit)
            starts = list(range(0, n - self.MIN_ROWS, self.CPU_ROWS))
            ends = starts[1:] + [n]
            return torch.cat([self._rows(x[a:b], projected, None if index is None else index[a:b])
                              for a, b in zip(starts, ends)])
        return self._rows(x, projected, index)

    def _rows(self, x: Tensor, projected: Tensor | None, index: Tensor | None) -> Tensor:
        """The MLP of rows ``x`` whose first layer adds ``projected[index]`` (the shared inputs already
        multiplied by their part of the first weight), or of ``x`` alone."""
        layers = list(self.hidden) + [self.out]
        first = layers[0]
        if projected is None:
            x = first(x)
        else:
            x = x @ first.weight.to(x.dtype)[:, :x.shape[1]].t() + gather_rows(projected, index)
            if first.bias is not None:
                x = x + first.bias.to(x.dtype)
        for layer in layers[1:]:
            x = layer(torch.nn.functional.leaky_relu(x, LEAKY_SLOPE))
        return torch.tanh(x)


class AlphaVdR(nn.Module):
    """The alpha-VdR module: per (plane, pixel) pair, the colour offset ``K H`` [N, 3].

    Input widths derive from the encodings and ``w_dim``: MLP_K reads
    ``2 * 2 * pos_freqs + 2 * depth_freqs + w_dim`` features (568 at the published 10/8/512),
    MLP_H ``2 * 2 * len(dir_freqs) + w_dim`` (524 at 512).
    """

    def __init__(self, w_dim: int, pos_freqs: int = 10, depth_freqs: int = 8, dir_freqs: Sequence[float] = (1, 2, 4),
                 k_hidden: int = 784, k_layers: int = 3, h_hidden: int = 64, h_layers: int = 2,
                 dir_scale: float = math.pi / 2):
        super().__init__()
        _require(w_dim >= 1 and pos_freqs >= 1 and depth_freqs >= 1 and len(dir_freqs) >= 1,
                 f"invalid AlphaVdR sizes: w_dim={w_dim}, pos_freqs={pos_freqs}, depth_freqs={depth_freqs}, "
                 f"dir_freqs={dir_freqs}")
        self.w_dim, self.pos_freqs, self.depth_freqs = int(w_dim), int(pos_freqs), int(depth_freqs)
        self.dir_freqs, self.dir_scale = tuple(float(f) for f in dir_freqs), float(dir_scale)
        self.k_in_features = 2 * 2 * self.pos_freqs + 2 * self.depth_freqs + self.w_dim
        self.h_in_features = 2 * 2 * len(self.dir_freqs) + self.w_dim
        self.mlp_k = CoefficientMLP(self.k_in_features, k_hidden, k_layers, 12)
        self.mlp_h = CoefficientMLP(self.h_in_features, h_hidden, h_layers, 4)

    def coefficients(self, uv: Tensor, d: Tensor, omega: Tensor, w: Tensor, index: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
        """uv [N, 2] in [-1, 1] (texel-centre units), d [N] metric plane depth, omega [N, 2] -> K [N, 3, 4], H [N, 4].

        ``w`` is [N, w_dim] (one latent per pair), or [L, w_dim] with ``index`` [N] naming each
        pair's latent, which lets the MLPs apply their first layer to each latent once."""
        n = uv.shape[0]
        if index is None:
            index = torch.arange(n, device=uv.device)
            _require(w.shape[0] == n, f"w must be [N, {self.w_dim}] = [{n}, {self.w_dim}] without an index, "
                                      f"got {tuple(w.shape)}")
        _require(uv.shape == (n, 2) and d.shape == (n,) and omega.shape == (n, 2) and index.shape == (n,)
                 and w.ndim == 2 and w.shape[1] == self.w_dim,
                 f"AlphaVdR expects uv [N, 2], d [N], omega [N, 2], w [L, {self.w_dim}], index [N]; got "
                 f"{tuple(uv.shape)}, {tuple(d.shape)}, {tuple(omega.shape)}, {tuple(w.shape)}, {tuple(index.shape)}")
        k_in = torch.cat([positional_encoding(uv, self.pos_freqs),
                          positional_encoding(d[:, None].to(uv.dtype), self.depth_freqs)], dim=1)
        return self.mlp_k(k_in, w, index).view(n, 3, 4), self.direction_coefficients(omega.to(uv.dtype), w, index)

    def position_coefficients(self, uv: Tensor, plane_depth: Tensor, plane: Tensor, w: Tensor, latent: Tensor
                              ) -> Tensor:
        """K [N, 3, 4] of pairs on a shared set of planes: uv [N, 2], plane_depth [P] (metric depths
        of the MPI's planes), plane [N] and latent [N] indices into plane_depth and w [L, w_dim].

        The same function as :meth:`coefficients` with ``d = plane_depth[plane]``: the first
        layer's (gamma(d), w) part is evaluated once per (plane, latent) combination and gathered.
        """
        n, p, n_latents = uv.shape[0], plane_depth.shape[0], w.shape[0]
        _require(uv.shape == (n, 2) and plane.shape == (n,) and latent.shape == (n,) and plane_depth.ndim == 1
                 and w.ndim == 2 and w.shape[1] == self.w_dim,
                 f"position_coefficients expects uv [N, 2], plane_depth [P], plane [N], w [L, {self.w_dim}], "
                 f"latent [N]; got {tuple(uv.shape)}, {tuple(plane_depth.shape)}, {tuple(plane.shape)}, "
                 f"{tuple(w.shape)}, {tuple(latent.shape)}")
        depth_enc = positional_encoding(plane_depth[:, None].to(uv.dtype), self.depth_freqs)  # [P, 2 * depth_freqs]
        shared = torch.cat([depth_enc[:, None].expand(p, n_latents, -1),
                            w.to(uv.dtype)[None].expand(p, n_latents, -1)], dim=2).reshape(p * n_latents, -1)
        return self.mlp_k(positional_encoding(uv, self.pos_freqs), shared, plane * n_latents + latent).view(n, 3, 4)

    def direction_coefficients(self, omega: Tensor, w: Tensor, latent: Tensor | None = None) -> Tensor:
        """H [M, 4] of viewing directions omega [M, 2] (x, y of the unit ray in the canonical frame),
        with w [M, w_dim], or w [L, w_dim] and latent [M] naming each direction's latent."""
        m = omega.shape[0]
        if latent is None:
            _require(w.shape[0] == m, f"w must be [M, {self.w_dim}] = [{m}, {self.w_dim}] without an index, "
                                      f"got {tuple(w.shape)}")
            latent = torch.arange(m, device=omega.device)
        _require(omega.shape == (m, 2) and latent.shape == (m,),
                 f"direction_coefficients expects omega [M, 2] and latent [M], got {tuple(omega.shape)}, "
                 f"{tuple(latent.shape)}")
        return self.mlp_h(direction_encoding(omega, self.dir_freqs, self.dir_scale), w, latent)

    def delta(self, uv: Tensor, d: Tensor, omega: Tensor, w: Tensor, index: Tensor | None = None) -> Tensor:
        """The view-dependent colour offset K @ H [N, 3] (each entry in [-4, 4])."""
        k, h = self.coefficients(uv, d, omega, w, index)
        return torch.einsum("nij,nj->ni", k, h)

    forward = delta

    @torch.no_grad()
    def zero_output_(self, include_h: bool = False) -> "AlphaVdR":
        """Zero MLP_K's output layer, so K = 0 and the module is an exact no-op (K H = 0).

        MLP_H is left alone by default: if both K and H were zero, dK H / dK = H = 0 and
        dK H / dH = K = 0, a saddle that no gradient leaves. With only K zeroed the output layer
        of MLP_K still receives gradient through H, so this doubles as a training init that starts
        exactly at GMPI. ``include_h=True`` zeroes MLP_H's output layer too.
        """
        heads = [self.mlp_k.out] + ([self.mlp_h.out] if include_h else [])
        for layer in heads:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
        return self


# --------------------------------------------------------------------------------------------
# alpha-guided pixel sampling
# --------------------------------------------------------------------------------------------

class SampledPairs(NamedTuple):
    """Index tensors [N] of sampled (image, plane, row, column) pairs: ``weights[b, p, 0, y, x]``."""
    batch: Tensor
    plane: Tensor
    y: Tensor
    x: Tensor


def sample_pairs(weights: Tensor, fraction: float, threshold: float = 0.0,
                 generator: torch.Generator | None = None, images: Tensor | None = None) -> SampledPairs:
    """alpha-guided pixel sampling on compositing weights [B, P, 1, H, W].

    Every (plane, pixel) pair with weight > ``threshold`` is kept independently with probability
    ``fraction`` (so the kept share is ``fraction`` up to binomial sampling error; 1 keeps all of
    them and draws nothing). ``images`` (bool [B]) restricts the choice to those images.
    Deterministic for a given ``generator`` (its device may differ from the weights'). Pairs come
    ordered by (image, plane, row, column). No gradient flows through the choice.
    """
    _require(weights.ndim == 5 and weights.shape[2] == 1,
             f"weights must be [B, P, 1, H, W], got {tuple(weights.shape)}")
    _require(0.0 <= fraction <= 1.0, f"fraction must be in [0, 1], got {fraction}")
    keep = weights.detach()[:, :, 0] > threshold  # [B, P, H, W]
    if images is not None:
        _require(images.shape == (weights.shape[0],) and images.dtype == torch.bool,
                 f"images must be bool [{weights.shape[0]}], got {images.dtype} {tuple(images.shape)}")
        keep &= images.to(keep.device)[:, None, None, None]
    if fraction == 0.0:
        keep = torch.zeros_like(keep)
    elif fraction < 1.0:
        key_device = generator.device if generator is not None else weights.device
        draw = torch.rand(keep.shape, generator=generator, device=key_device).to(weights.device)
        keep &= draw < fraction
    return SampledPairs(*keep.nonzero(as_tuple=True))


def canonical_pixel_directions(src_cam2world: Tensor, tgt_cam2world: Tensor, tgt_K: Tensor,
                               out_hw: tuple[int, int]) -> Tensor:
    """Unit ray directions [B, H, W, 3] through the target cameras' pixel centres, expressed in
    the source (canonical) camera's OpenCV frame. Camera and intrinsic batches of size 1 broadcast.

    A ray has one direction for all the planes it crosses, so this is everything the direction
    MLP needs from the geometry."""
    rel = relative_pose(src_cam2world, tgt_cam2world)  # target -> source coordinates
    k_inv = torch.linalg.inv(torch.as_tensor(tgt_K).to(rel).reshape(-1, 3, 3))
    n = max(rel.shape[0], k_inv.shape[0])
    to_canonical = rel[:, :3, :3].expand(n, 3, 3) @ k_inv.expand(n, 3, 3)
    dirs = torch.einsum("bij,hwj->bhwi", to_canonical, pixel_centres(out_hw, rel))
    return dirs * torch.rsqrt(dirs.square().sum(-1, keepdim=True))  # |dirs| >= 1 (third component 1)


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------

INFERENCE_VDR_MODES = ("all", "baked", "sampled", "off")
BAKE_MATMUL_MODES = ("auto", "float32", "bfloat16")
BAKED_DTYPE = torch.float16  # K in [-1, 1]: half precision is within 2.5e-4 of it, 16x below an 8-bit colour step


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (a GPU that supports it; a CPU with
    AVX-512 BF16 or AMX, where oneDNN runs them at about 2x the float32 rate): the baked K's MLP
    runs in bfloat16 there (float32 accumulation), and in float32 elsewhere, where bfloat16 would
    be emulated and slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                          "_is_amx_tile_supported"))
    return False


def texel_mask(alpha: Tensor, threshold: float) -> Tensor:
    """The texels [B, P, 1, R, R] (bool) where MLP_K is baked: within one texel of a texel whose alpha
    exceeds ``threshold``. A pair's compositing weight is at most its bilinearly sampled alpha, so
    an eligible pair (weight > threshold) has a corner texel with alpha > threshold, and all four
    corners it interpolates K from lie in this mask: baking here loses nothing ``all`` would use."""
    b, p = alpha.shape[:2]
    hot = (alpha.reshape(b * p, 1, *alpha.shape[-2:]) > threshold).float()
    return (torch.nn.functional.max_pool2d(hot, 3, stride=1, padding=1) > 0).reshape(alpha.shape)


def bilinear_corners(coords: Tensor, hs: int, ws: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The texels a bilinear sample of an Hs x Ws texture at grid coordinates [N, 2] (grid_sample's
    align_corners=False units, clamped to the outer texels) reads: the top-left corner x0, y0 [N]
    (long; the others are x0 + 1 and y0 + 1, all inside the texture) and the weights fx, fy [N]
    (float32) of the right and bottom ones."""
    coords = coords.to(torch.float32)
    x = ((coords[:, 0] + 1) * ws / 2 - 0.5).clamp(0, ws - 1)
    y = ((coords[:, 1] + 1) * hs / 2 - 0.5).clamp(0, hs - 1)
    x0, y0 = x.floor().long().clamp(max=ws - 2), y.floor().long().clamp(max=hs - 2)
    return x0, y0, x - x0, y - y0


def bilinear_sample(texture: Tensor, coords: Tensor, image: Tensor, plane: Tensor) -> Tensor:
    """Bilinear samples [N, C] of per-plane textures [B, P, C, Hs, Ws] at grid coordinates [N, 2]
    (grid_sample's align_corners=False units) on (image, plane) [N] each, clamped to the outer
    texels (border padding: K is a property of the plane, defined up to its edge). The texels read
    are :func:`bilinear_corners`."""
    b, p, c, hs, ws = texture.shape
    _require(min(hs, ws) >= 2 and coords.shape == (image.numel(), 2) and plane.shape == image.shape,
             f"bilinear_sample expects textures >= 2 x 2 and coords [N, 2], image [N], plane [N]; got "
             f"{tuple(texture.shape)}, {tuple(coords.shape)}, {tuple(image.shape)}, {tuple(plane.shape)}")
    x0, y0, fx, fy = bilinear_corners(coords, hs, ws)
    fx, fy = fx[:, None], fy[:, None]
    flat = texture.permute(0, 1, 3, 4, 2).reshape(-1, c)                       # [B * P * Hs * Ws, C]
    base = (image * p + plane) * hs

    def at(dy: int, dx: int) -> Tensor:
        return gather_rows(flat, (base + y0 + dy) * ws + x0 + dx).to(torch.float32)
    top = at(0, 0) * (1 - fx) + at(0, 1) * fx
    bottom = at(1, 0) * (1 - fx) + at(1, 1) * fx
    return top * (1 - fy) + bottom * fy


@dataclass(frozen=True)
class GMNRConfig(GMPIConfig):
    """GMPI's config plus the alpha-VdR settings (published defaults)."""
    vdr_enabled: bool = True
    vdr_fraction: float = 0.6            # share of the above-threshold (plane, pixel) pairs that get VdR
    vdr_threshold: float = 0.0           # pairs need compositing weight > this ("non-zero")
    vdr_pos_freqs: int = 10
    vdr_depth_freqs: int = 8
    vdr_dir_freqs: tuple[float, ...] = (1.0, 2.0, 4.0)  # times pi / 2
    vdr_k_hidden: int = 784
    vdr_k_layers: int = 3
    vdr_h_hidden: int = 64
    vdr_h_layers: int = 2
    vdr_zero_init: bool = False          # start as an exact no-op (GMPI), see AlphaVdR.zero_output_

    def __post_init__(self):
        _require(0.0 <= self.vdr_fraction <= 1.0, f"vdr_fraction must be in [0, 1], got {self.vdr_fraction}")
        _require(self.vdr_threshold >= 0.0, f"vdr_threshold must be >= 0, got {self.vdr_threshold}")


class GMNRGenerator(GMPIGenerator):
    """GMPI generator + alpha-VdR. ``render`` returns GMPI's dict plus ``n_sampled`` [B * V].

    ``inference_vdr`` (not part of the trained config: an inference choice) picks the pairs in
    ``eval()`` mode: ``all`` eligible pairs (default), ``sampled`` (the training-time random
    share) or ``off``. Training always samples."""

    def __init__(self, cfg: GMNRConfig, inference_vdr: str = "all"):
        super().__init__(cfg)
        self.vdr = AlphaVdR(cfg.w_dim, cfg.vdr_pos_freqs, cfg.vdr_depth_freqs, cfg.vdr_dir_freqs,
                            cfg.vdr_k_hidden, cfg.vdr_k_layers, cfg.vdr_h_hidden, cfg.vdr_h_layers)
        if cfg.vdr_zero_init:
            self.vdr.zero_output_()
        self.set_inference_vdr(inference_vdr)

    def set_inference_vdr(self, mode: str) -> "GMNRGenerator":
        _require(mode in INFERENCE_VDR_MODES, f"inference VdR mode must be one of {INFERENCE_VDR_MODES}, got {mode!r}")
        self.inference_vdr = mode
        return self

    def vdr_fraction(self) -> float:
        cfg = self.cfg
        if not cfg.vdr_enabled:
            return 0.0
        if self.training or self.inference_vdr == "sampled":
            return float(cfg.vdr_fraction)
        return 1.0 if self.inference_vdr in ("all", "baked") else 0.0

    def baking(self) -> bool:
        """Whether K comes from the texel grid (``baked``, in eval mode) instead of MLP_K per pair."""
        return self.cfg.vdr_enabled and not self.training and self.inference_vdr == "baked"

    @torch.no_grad()
    def bake(self, mpi: dict[str, Tensor], dtype: torch.dtype = BAKED_DTYPE, eager: bool = False
             ) -> dict[str, Tensor]:
        """The MPI with the texel-grid cache of K: ``baked_k`` [B, P, 12, R, R] (``dtype``) and
        ``baked_mask`` [B, P, R, R] (bool: the texels computed so far). K is MLP_K at the texel
        centres (align_corners=True units: u = -1 + 2 j / (R - 1)); it depends on the texel, the
        plane and the latent, not on the view (NeX's factorisation), so every view of this MPI
        samples it like a colour.

        Lazy (default): the cache starts empty and each view rendered from this dict computes the
        texels its pairs read that no earlier view computed (:meth:`bake_texels`), so a video
        computes each texel it needs once. ``eager``: every texel inside :func:`texel_mask` (all an
        eligible pair can read) at once, the same values. Uncomputed texels hold 0."""
        alpha = mpi["alpha"]
        b, p, _, hs, ws = alpha.shape
        baked = torch.zeros(b, p, hs, ws, 12, dtype=dtype, device=alpha.device)
        mask = torch.zeros(b, p, hs, ws, dtype=torch.bool, device=alpha.device)
        out = {**mpi, "baked_k": baked.permute(0, 1, 4, 2, 3), "baked_mask": mask}
        if eager:
            self.bake_texels(out, *texel_mask(alpha, self.cfg.vdr_threshold)[:, :, 0].nonzero(as_tuple=True))
        return out

    def bake_products(self, device: torch.device) -> torch.dtype:
        """The dtype of the baked K's matrix products on ``device`` under :attr:`bake_matmul`."""
        _require(self.bake_matmul in BAKE_MATMUL_MODES,
                 f"bake_matmul must be one of {BAKE_MATMUL_MODES}, got {self.bake_matmul!r}")
        if self.bake_matmul == "bfloat16" or (self.bake_matmul == "auto" and fast_bfloat16(torch.device(device))):
            return torch.bfloat16
        return torch.float32

    @torch.no_grad()
    def bake_texels(self, mpi: dict[str, Tensor], latent: Tensor, plane: Tensor, row: Tensor, col: Tensor,
                    corners: bool = False) -> int:
        """Computes K into ``mpi["baked_k"]`` at those of the texels (latent, plane, row, col) [N]
        (repeats allowed) that ``mpi["baked_mask"]`` does not yet hold, marks them, and returns how
        many it computed. ``corners``: each (row, col) is the top-left corner of a bilinear sample
        (:func:`bilinear_corners`), and its three other corners are meant too. In place: the cache
        fills up across the views rendered from one dict. Chunked: at most :attr:`INFERENCE_CHUNK`
        texels go through the MLP at once."""
        cache, done = mpi["baked_k"], mpi["baked_mask"]
        products = self.bake_products(cache.device)  # refuses a bad bake_matmul before any work
        b, p, hs, ws = done.shape
        # the new texels, each once, in (latent, plane, row, col) order: marked on a grid of the cache's
        # size and read back, which is linear in the texels where sorting the keys (unique) was the
        # larger part of a late frame's cost, when almost every texel it reads is already computed
        wanted = torch.zeros_like(done).view(-1)
        key = ((latent * p + plane) * hs + row) * ws + col
        for offset in ((0, 1, ws, ws + 1) if corners else (0,)):
            wanted[key + offset] = True
        key = (wanted & ~done.view(-1)).nonzero().squeeze(1)
        if key.numel() == 0:
            return 0
        col, row = key % ws, key // ws % hs
        plane, latent = key // (ws * hs) % p, key // (ws * hs * p)
        texels = cache.permute(0, 1, 3, 4, 2)                                         # [B, P, R, R, 12] view
        depths, w = mpi["depths"], mpi["w"]
        us = torch.linspace(-1, 1, ws, device=cache.device)
        vs = torch.linspace(-1, 1, hs, device=cache.device)
        bfloat16 = products == torch.bfloat16
        for c in self._chunks(key.numel()):
            n = latent[c].numel()
            # a batch of a few rows can take another matrix-product path (on a CPU: 1-3 rows differ
            # from the same rows in a larger batch in the last float32 bit): pad it with repeats
            pad = (slice(None) if n >= self.MIN_BAKE_ROWS else
                   torch.arange(self.MIN_BAKE_ROWS, device=key.device).clamp(max=n - 1))
            uv = torch.stack([us[col[c][pad]], vs[row[c][pad]]], dim=1)
            with torch.autocast(cache.device.type, dtype=torch.bfloat16, enabled=bfloat16):
                k = self.vdr.position_coefficients(uv, depths.to(uv), plane[c][pad], w, latent[c][pad])[:n]  # [N, 3, 4]
            texels[latent[c], plane[c], row[c], col[c]] = k.reshape(-1, 12).to(cache.dtype)
        done.view(-1)[key] = True
        return key.numel()

    # Pairs (and pixels) per chunk when no gradient is recorded: bounds the per-pair tensors and
    # MLP_K's hidden activations (784 wide at the published size) to ~200 MB however many pairs a
    # 1024 px frame has. With autograd everything runs in one pass.
    INFERENCE_CHUNK = 1 << 16
    # Pairs per chunk of a baked frame, where no MLP runs per pair: its per-pair tensors (texture
    # coordinates, four corner reads of 12 K values, H, colours, indices) take about 300 bytes, so ~1 GB
    # at this size. Few chunks matter on a GPU, where each is some 30 small kernels: at 1024 px a frame
    # has ~12 M pairs, 190 chunks of INFERENCE_CHUNK.
    BAKED_PAIR_CHUNK = 1 << 22
    MIN_BAKE_ROWS = 16  # see bake_texels
    # The baked K's matrix products: "auto" runs them in bfloat16 where the device does that natively
    # (fast_bfloat16; its error against float32 is measured in docs/benchmarks.md), "float32" always
    # in float32 (exact against `all`'s MLP_K up to summation order), "bfloat16" always in bfloat16.
    # An inference choice, like the mode.
    bake_matmul = "auto"

    def _chunks(self, n: int, size: int | None = None) -> list[slice]:
        """Slices of at most ``size`` (default :attr:`INFERENCE_CHUNK`) rows covering n; one slice when
        autograd records (training runs in one pass)."""
        size = size or self.INFERENCE_CHUNK
        if torch.is_grad_enabled() or n <= size:
            return [slice(0, n)]
        return [slice(s, s + size) for s in range(0, n, size)]

    def synthesize(self, ws: Tensor, n_planes: int, noise_mode: str = "const") -> dict[str, Tensor]:
        """GMPI's MPI plus ``w`` [B, w_dim], the latent alpha-VdR reads (published: ``ws[:, 0]``)."""
        mpi = super().synthesize(ws, n_planes, noise_mode)
        mpi["w"] = ws[:, 0]
        return mpi

    def render_mpi(self, mpi: dict[str, Tensor], cam2world: Tensor, intrinsics: Tensor | None = None,
                   return_planes: bool = False, generator: torch.Generator | None = None,
                   vdr_views: Tensor | None = None) -> dict[str, Tensor]:
        """As :meth:`GMPIGenerator.render_mpi`, with view-dependent colour at the sampled pairs;
        the dict also holds ``n_sampled`` [B * V].

        ``generator`` drives the pair sampling; ``vdr_views`` (bool [B * V]) limits the
        view-dependent colour to those views (the others are GMPI's render of the same MPI). With
        VdR off (switch, fraction 0 or ``inference_vdr='off'`` in eval mode) this is GMPI's render,
        bit for bit.
        """
        fraction = self.vdr_fraction()
        out = super().render_mpi(mpi, cam2world, intrinsics, return_planes=return_planes or fraction > 0.0)
        views = out["image"].shape[0]
        if fraction == 0.0:
            out["n_sampled"] = torch.zeros(views, dtype=torch.long, device=out["image"].device)
            return out
        grid, rgb_t = (out["grid"], out["rgb_planes"]) if return_planes else (out.pop("grid"), out.pop("rgb_planes"))
        pairs = sample_pairs(out["weights"], fraction, self.cfg.vdr_threshold, generator, vdr_views)
        if pairs.batch.numel() > 0:
            baked = None
            if self.baking():  # K cached per MPI: a caller rendering many views passes the baked MPI back
                baked = mpi if "baked_k" in mpi else self.bake(mpi)
            out["image"] = out["image"] + self._vdr_correction(pairs, grid, rgb_t, out, mpi["w"], cam2world, baked)
        out["n_sampled"] = torch.bincount(pairs.batch, minlength=views)
        return out

    def _vdr_correction(self, pairs: SampledPairs, grid: Tensor, rgb_t: Tensor, out: dict[str, Tensor],
                        w: Tensor, cam2world: Tensor, baked: dict[str, Tensor] | None = None) -> Tensor:
        """The image change [B * V, 3, R, R] from giving the sampled pairs view-dependent colour.
        ``baked`` (an MPI with :meth:`bake`'s cache): K sampled bilinearly from the texel grid instead
        of MLP_K at each pair's exact texture coordinate, the texels it reads computed first where
        the cache lacks them."""
        image, depths = out["image"], out["plane_depths"].to(grid)                              # [P] metric
        views, res = image.shape[0], image.shape[-1]
        per_latent = views // w.shape[0]
        # grid is in grid_sample's align_corners=False units (+-1 at the texture's outer edges); the
        # published uv is in align_corners=True units (+-1 at the outer texel centres)
        to_texel_centre_units = res / (res - 1)
        # H once per target pixel (a ray's direction is the same on every plane), gathered per pair
        omega = canonical_pixel_directions(out["src_cam2world"], cam2world, out["k_tgt"], (res, res))
        omega = omega[..., :2].reshape(-1, 2).to(grid.dtype)
        pixel_latent = torch.arange(views, device=grid.device).repeat_interleave(res * res) // per_latent
        h_pixels = torch.cat([self.vdr.direction_coefficients(omega[c], w, pixel_latent[c])
                              for c in self._chunks(omega.shape[0])])                           # [B*V*R*R, 4]
        correction = image.new_zeros(views * res * res, 3)
        all_coords = gather_pairs(grid.permute(0, 1, 4, 2, 3), pairs)  # [N, 2] texture coordinates of the pairs
        if baked is not None:  # the texels this view reads that the cache lacks: computed once, for all chunks
            x0, y0, _, _ = bilinear_corners(all_coords, *baked["baked_k"].shape[-2:])
            self.bake_texels(baked, pairs.batch // per_latent, pairs.plane, y0, x0, corners=True)
            del x0, y0
        for c in self._chunks(pairs.batch.numel(), self.INFERENCE_CHUNK if baked is None else self.BAKED_PAIR_CHUNK):
            chunk = SampledPairs(*(t[c] for t in pairs))
            pixel = (chunk.batch * res + chunk.y) * res + chunk.x
            coords, latent = all_coords[c], chunk.batch // per_latent
            if baked is None:  # K per pair; the (plane depth, latent) part of MLP_K's first layer once per combination
                uv = (coords * to_texel_centre_units).clamp(-1.0, 1.0)
                k = self.vdr.position_coefficients(uv, depths, chunk.plane, w, latent)  # [N, 3, 4]
            else:  # the views of one latent share its baked K
                k = bilinear_sample(baked["baked_k"], coords, latent, chunk.plane).view(-1, 3, 4)
            delta = (k * gather_rows(h_pixels, pixel).to(k)[:, None, :]).sum(-1)               # K H [N, 3]
            c01 = (gather_pairs(rgb_t, chunk) + 1.0) / 2.0                                      # [N, 3] in [0, 1]
            new = (c01 + delta.to(c01)).clamp(0.0, 1.0)
            # compositing [-1, 1] colours 2c' - 1 instead of 2c - 1 adds 2 w (c' - c) per pair
            contrib = 2.0 * gather_pairs(out["weights"], chunk) * (new - c01)
            correction.index_add_(0, pixel, contrib.to(image))
        return correction.view(views, res, res, 3).permute(0, 3, 1, 2)

    def forward(self, z: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None, truncation_psi: float = 1.0,
                n_planes: int | None = None, noise_mode: str = "const", generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [B, {self.z_dim}], got {tuple(z.shape)}"
        ws = self.mapping(z, None, truncation_psi=truncation_psi)
        return self.render(ws, cam2world, intrinsics, n_planes, noise_mode, generator=generator)
