"""GMNR generator (Kumar et al., ICCV 2023): GMPI plus an alpha-guided view-dependent colour term.

GMPI renders planes whose colour does not depend on the viewing direction. GMNR adds, for a
random subset of the (plane, target pixel) pairs that contribute to the image,

    c' = clip(c + K H, 0, 1),
    K = tanh(MLP_K([gamma_10(u), gamma_10(v), gamma_8(d), w]))      (3 x 4, position coefficients)
    H = tanh(MLP_H([gamma'(omega_x), gamma'(omega_y), w]))           (4,   direction coefficients)

with (u, v) the plane texture coordinates hit by the pixel's ray (in [-1, 1]), d the plane depth
normalised to [0, 1] over the MPI depth range, (omega_x, omega_y) the x, y components of the unit
ray direction in the canonical (source) camera frame and w the latent. The pairs are drawn by
*alpha-guided pixel sampling*: among the pairs whose compositing weight exceeds a threshold
(0: "non-zero"), a fixed fraction (60% published) is chosen uniformly without replacement.

Everything else - the StyleGAN2 backbone, the alpha branch, the homography warp and the
compositing - is GMPI's (:class:`GMNRGenerator` subclasses :class:`GMPIGenerator`). The weights
depend on alpha only, so the view-dependent colour enters the image as a sparse correction
``sum_{sampled} w_i (c'_i - c_i)`` that is gathered, evaluated and scattered back pair by pair:
no per-plane colour tensor beyond GMPI's own is materialised.

Shapes follow the config (resolution, planes, w_dim, encodings); none is hard-coded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn

from gmnr.models.gmpi import GMPIConfig, GMPIGenerator
from gmnr.models.stylegan2 import FullyConnectedLayer
from gmnr.render.mpi import relative_pose

Tensor = torch.Tensor

LEAKY_SLOPE = 0.01


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


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


def positional_encoding(x: Tensor, n_freqs: int, scale: float = math.pi) -> Tensor:
    """NeRF positional encoding gamma_L: sin/cos of ``2^k * scale * x``, k = 0..L-1.
    [..., D] -> [..., D * 2 * n_freqs]."""
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
    """``n_hidden`` equalised-lr linear layers of width ``hidden`` with leaky ReLU (slope 0.01),
    then a linear output layer followed by tanh."""

    def __init__(self, in_features: int, hidden: int, n_hidden: int, out_features: int):
        super().__init__()
        _require(n_hidden >= 0 and hidden >= 1, f"need hidden >= 1 and n_hidden >= 0, got {hidden}, {n_hidden}")
        widths = [in_features] + [hidden] * n_hidden
        self.hidden = nn.ModuleList(FullyConnectedLayer(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = FullyConnectedLayer(widths[-1], out_features)

    @property
    def dims(self) -> list[int]:
        return [layer.in_features for layer in self.hidden] + [self.out.in_features, self.out.out_features]

    def forward(self, x: Tensor, shared: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        """MLP of ``cat([x, shared[index]])`` (or of ``x`` alone when ``shared`` is None).

        The first layer is linear in its input, so the ``shared`` part (the latent w, the same for
        every pair of one image) is multiplied once per latent and gathered, instead of once per
        pair: the same function at a fraction of the cost (w is 512 of MLP_K's 568 inputs).
        """
        layers = list(self.hidden) + [self.out]
        first = layers[0]
        if shared is None:
            x = first(x)
        else:
            _require(index is not None and index.shape == (x.shape[0],),
                     f"shared inputs need an index [N] = [{x.shape[0]}], got {None if index is None else tuple(index.shape)}")
            weight = first.weight.to(x.dtype) * first.weight_gain
            f = x.shape[1]
            _require(f + shared.shape[1] == first.in_features,
                     f"inputs {f} + {shared.shape[1]} must add up to {first.in_features}")
            x = x @ weight[:, :f].t() + (shared.to(x.dtype) @ weight[:, f:].t())[index]
            if first.bias is not None:
                x = x + first.bias.to(x.dtype) * first.bias_gain
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
        """uv [N, 2] in [-1, 1], d [N] in [0, 1], omega [N, 2] -> K [N, 3, 4], H [N, 4].

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
        h_in = direction_encoding(omega.to(uv.dtype), self.dir_freqs, self.dir_scale)
        return self.mlp_k(k_in, w, index).view(n, 3, 4), self.mlp_h(h_in, w, index)

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
                 generator: torch.Generator | None = None) -> SampledPairs:
    """alpha-guided pixel sampling on compositing weights [B, P, 1, H, W].

    Per image, among the (plane, pixel) pairs with weight > ``threshold``, choose
    ``round(fraction * count)`` uniformly without replacement (random keys, the smallest win).
    Deterministic for a given ``generator`` (its device may differ from the weights'). Pairs are
    ordered by image; within an image the order is random. No gradient flows through the choice.
    """
    _require(weights.ndim == 5 and weights.shape[2] == 1, f"weights must be [B, P, 1, H, W], got {tuple(weights.shape)}")
    _require(0.0 <= fraction <= 1.0, f"fraction must be in [0, 1], got {fraction}")
    b, p, _, h, w = weights.shape
    device = weights.device
    flat = weights.detach().reshape(b, p * h * w)
    valid = flat > threshold
    count = torch.round(valid.sum(dim=1).double() * float(fraction)).long()  # [B]
    if fraction == 0.0 or flat.shape[1] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return SampledPairs(empty, empty, empty, empty)
    key_device = generator.device if generator is not None else device
    keys = torch.rand(flat.shape, generator=generator, device=key_device).to(device)
    keys = keys.masked_fill(~valid, 2.0)  # invalid pairs sort after every valid one (keys < 1)
    order = torch.argsort(keys, dim=1, stable=True)
    take = torch.arange(flat.shape[1], device=device)[None, :] < count[:, None]
    bi, rank = take.nonzero(as_tuple=True)
    idx = order[bi, rank]
    return SampledPairs(bi, idx // (h * w), (idx % (h * w)) // w, idx % w)


def canonical_view_directions(src_cam2world: Tensor, tgt_cam2world: Tensor, tgt_K: Tensor,
                              batch: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Unit ray directions [N, 3] of target pixels (x, y) (integer indices, centres at +0.5) of
    target cameras ``batch``, expressed in the source (canonical) camera's OpenCV frame.
    Camera and intrinsic batches of size 1 broadcast."""
    rel = relative_pose(src_cam2world, tgt_cam2world)  # target -> source coordinates
    k_inv = torch.linalg.inv(torch.as_tensor(tgt_K).to(rel).reshape(-1, 3, 3))
    n = max(rel.shape[0], k_inv.shape[0])
    rot = rel[:, :3, :3].expand(n, 3, 3)[batch]
    k_inv = k_inv.expand(n, 3, 3)[batch]
    pix = torch.stack([x.to(rel) + 0.5, y.to(rel) + 0.5, torch.ones_like(x, dtype=rel.dtype)], dim=-1)
    dirs = torch.einsum("nij,njk,nk->ni", rot, k_inv, pix)
    return torch.nn.functional.normalize(dirs, dim=-1)


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GMNRConfig(GMPIConfig):
    """GMPI's config plus the alpha-VdR settings (published defaults)."""
    vdr_enabled: bool = True
    vdr_fraction: float = 0.6            # share of the above-threshold (plane, pixel) pairs that get VdR
    vdr_fraction_eval: float | None = None  # in eval mode (None: vdr_fraction)
    vdr_threshold: float = 0.0           # pairs need compositing weight > this ("non-zero")
    vdr_pos_freqs: int = 10
    vdr_depth_freqs: int = 8
    vdr_dir_freqs: tuple[float, ...] = (1.0, 2.0, 4.0)  # times pi / 2
    vdr_k_hidden: int = 784
    vdr_k_layers: int = 3
    vdr_h_hidden: int = 64
    vdr_h_layers: int = 2
    vdr_zero_init: bool = False          # start as an exact no-op (GMPI), see AlphaVdR.zero_output_
    vdr_strict_clip: bool = False        # True: clip(c + KH, 0, 1) always; False: never clip c itself

    def __post_init__(self):
        _require(0.0 <= self.vdr_fraction <= 1.0, f"vdr_fraction must be in [0, 1], got {self.vdr_fraction}")
        _require(self.vdr_fraction_eval is None or 0.0 <= self.vdr_fraction_eval <= 1.0,
                 f"vdr_fraction_eval must be None or in [0, 1], got {self.vdr_fraction_eval}")
        _require(self.vdr_threshold >= 0.0, f"vdr_threshold must be >= 0, got {self.vdr_threshold}")


class GMNRGenerator(GMPIGenerator):
    """GMPI generator + alpha-VdR. ``render`` returns GMPI's dict plus ``n_sampled`` [B * V]."""

    def __init__(self, cfg: GMNRConfig):
        super().__init__(cfg)
        self.vdr = AlphaVdR(cfg.w_dim, cfg.vdr_pos_freqs, cfg.vdr_depth_freqs, cfg.vdr_dir_freqs,
                            cfg.vdr_k_hidden, cfg.vdr_k_layers, cfg.vdr_h_hidden, cfg.vdr_h_layers)
        if cfg.vdr_zero_init:
            self.vdr.zero_output_()

    def vdr_fraction(self) -> float:
        cfg = self.cfg
        if not cfg.vdr_enabled:
            return 0.0
        if not self.training and cfg.vdr_fraction_eval is not None:
            return float(cfg.vdr_fraction_eval)
        return float(cfg.vdr_fraction)

    # Pairs per MLP call when no gradient is recorded: bounds the hidden activations of MLP_K
    # (784 wide at the published size) to ~200 MB however many pairs a 1024 px frame has.
    INFERENCE_CHUNK = 1 << 16

    def _vdr_delta(self, uv: Tensor, d01: Tensor, omega: Tensor, w: Tensor, index: Tensor) -> Tensor:
        n = uv.shape[0]
        if torch.is_grad_enabled() or n <= self.INFERENCE_CHUNK:
            return self.vdr.delta(uv, d01, omega, w, index=index)
        return torch.cat([self.vdr.delta(uv[s:s + self.INFERENCE_CHUNK], d01[s:s + self.INFERENCE_CHUNK],
                                         omega[s:s + self.INFERENCE_CHUNK], w, index=index[s:s + self.INFERENCE_CHUNK])
                          for s in range(0, n, self.INFERENCE_CHUNK)])

    def render(self, ws: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None, n_planes: int | None = None,
               noise_mode: str = "const", generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """As :meth:`GMPIGenerator.render`, with view-dependent colour at the sampled pairs.

        ``generator`` drives the pair sampling. The VdR latent is ``ws[:, -1]`` (the style the last
        ToRGB reads; all rows are equal without style mixing). With VdR off (switch or fraction 0)
        this is GMPI's render, bit for bit.
        """
        fraction = self.vdr_fraction()
        if fraction == 0.0:
            out = super().render(ws, cam2world, intrinsics, n_planes, noise_mode)
            out["n_sampled"] = torch.zeros(out["image"].shape[0], dtype=torch.long, device=out["image"].device)
            return out

        out = super().render(ws, cam2world, intrinsics, noise_mode=noise_mode, n_planes=n_planes,
                             return_planes=True)
        grid, rgb_t, weights, image = out.pop("grid"), out.pop("rgb_planes"), out["weights"], out["image"]
        src, k_tgt, depths = out["src_cam2world"], out["k_tgt"], out["plane_depths"]
        batch, res = image.shape[0], image.shape[-1]
        w_vdr = ws[:, -1].repeat_interleave(batch // ws.shape[0], 0)

        # -- alpha-VdR on the sampled pairs only ----------------------------------------------------
        pairs = sample_pairs(weights, fraction, self.cfg.vdr_threshold, generator)
        bi, pi, yi, xi = pairs
        if bi.numel() > 0:
            near, far = self.cfg.depth_range
            uv = grid[bi, pi, yi, xi].clamp(-1.0, 1.0)                       # plane texture coords [N, 2]
            d01 = ((depths - near) / (far - near)).to(uv)[pi]                # [N]
            omega = canonical_view_directions(src, cam2world, k_tgt, bi, yi, xi)[:, :2].to(uv)
            delta = self._vdr_delta(uv, d01, omega, w_vdr, bi)                # [N, 3]
            c01 = (rgb_t[bi, pi, :, yi, xi] + 1.0) / 2.0                      # [N, 3] in [0, 1] units
            shifted = c01 + delta.to(c01)
            if self.cfg.vdr_strict_clip:
                new = shifted.clamp(0.0, 1.0)
            else:  # clip the offset's effect to [0, 1] without moving a base colour already outside it
                new = torch.clamp(shifted, torch.minimum(c01, torch.zeros_like(c01)),
                                  torch.maximum(c01, torch.ones_like(c01)))
            # compositing [-1, 1] colours 2c' - 1 instead of 2c - 1 adds 2 w (c' - c) per pair
            contrib = 2.0 * weights[bi, pi, 0, yi, xi][:, None] * (new - c01)
            correction = image.new_zeros(batch, res, res, 3).index_put((bi, yi, xi), contrib.to(image),
                                                                        accumulate=True)
            image = image + correction.permute(0, 3, 1, 2)
        out["image"] = image
        out["n_sampled"] = torch.bincount(bi, minlength=batch)
        return out

    def forward(self, z: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None, truncation_psi: float = 1.0,
                n_planes: int | None = None, noise_mode: str = "const", generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [B, {self.z_dim}], got {tuple(z.shape)}"
        ws = self.mapping(z, None, truncation_psi=truncation_psi)
        return self.render(ws, cam2world, intrinsics, n_planes, noise_mode, generator)
