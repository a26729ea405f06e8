"""FID and KID: pure functions of two feature sets, and the metric that renders a generator.

* FID (Heusel et al.): ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace of the
  matrix square root is computed from symmetric eigen-decompositions,
  ``tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))``, which is exact for covariance
  (symmetric positive semi-definite) matrices and takes well under a second at 2048-d, where
  ``scipy.linalg.sqrtm`` takes about 26 s.
* KID (Binkowski et al.): the unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets; the same estimator and subset
  draw order as clean-fid's ``kernel_distance``, with a seeded generator instead of the global one.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gmnr.eval.metrics import EvalContext, render


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64, unbiased, as clean-fid) of features [N, D]."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _blas_single_thread():
    """One BLAS thread for the eigen-decompositions: next to torch's OpenMP worker threads on a
    2-core machine, multi-threaded OpenBLAS oversubscribes the cores and runs 3-4x slower."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1, "blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib
        return contextlib.nullcontext()


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (eigh-based matrix square root)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    with _blas_single_thread():
        root1 = _sqrt_psd(sigma1)
        middle = root1 @ sigma2 @ root1
        eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets [N1, D], [N2, D].

    With fewer samples than dimensions (the demo: a few hundred 2048-d features) the covariances
    have rank < N and ``tr((S1 S2)^(1/2))`` equals the nuclear norm of ``X1 X2^T`` divided by
    ``sqrt((N1 - 1)(N2 - 1))`` (X: centred features), an N1 x N2 SVD instead of 2048-d
    eigen-decompositions; the same number, tested against :func:`frechet_distance`.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"need features [N >= 2, D] and [M >= 2, D], got {f1.shape} and {f2.shape}")
    if min(len(f1), len(f2)) >= f1.shape[1]:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    x1, x2 = f1 - mu1, f2 - mu2
    c1, c2 = len(f1) - 1, len(f2) - 1
    with _blas_single_thread():
        nuclear = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (x1 * x1).sum() / c1 + (x2 * x2).sum() / c2 - 2.0 * nuclear / np.sqrt(c1 * c2))


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased KID (clean-fid's estimator; subsets drawn from ``np.random.RandomState(seed)``)."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"need features [N, D] and [M, D], got {f1.shape} and {f2.shape}")
    n = f1.shape[1]
    m = min(f1.shape[0], f2.shape[0], max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.RandomState(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = f2[rng.choice(f2.shape[0], m, replace=False)]
        y = f1[rng.choice(f1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


# Below this many images in either set the 2048-d covariances are rank-deficient: FID and KID are
# biased (upward) and not comparable with published numbers (GMPI's protocol: 50,000). Reported
# anyway, with a warning in the report and on stderr, so a small demo still measures something.
FID_MIN_IMAGES = 2048


def small_set_warning(n_real: int, n_generated: int) -> str | None:
    if min(n_real, n_generated) >= FID_MIN_IMAGES:
        return None
    return (f"FID/KID from {n_real} real and {n_generated} generated images, fewer than {FID_MIN_IMAGES} (the "
            f"feature dimension): biased upward and not comparable with published values (50,000); compare "
            f"only with runs of the same counts")


# ------------------------------------------------------------------ the metric
class FIDKID:
    """FID and KID of a generator against the training set (packed images)."""

    name = "fid"

    def __init__(self, real_dir: Path, n_generated: int, real_max: int | None = None, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, cache_dir: Path | None = None, extractor=None,
                 generated_cache_dir: Path | None = None):
        from gmnr.eval.metrics.inception import load_extractor
        self.real_dir = Path(real_dir)
        self.n_generated = n_generated
        self.real_max = real_max
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.cache_dir = cache_dir
        self.generated_cache_dir = generated_cache_dir
        self.extractor = extractor or load_extractor()
        self.backend = self.extractor.backend  # the protocol and the network

    def real_features(self) -> tuple[np.ndarray, bool]:
        from gmnr.eval.metrics.inception import folder_features
        return folder_features(self.extractor, self.real_dir, self.real_max, self.cache_dir)

    def compute(self, G, ctx: EvalContext) -> dict:
        start = time.perf_counter()
        real, cached = self.real_features()
        t_real = time.perf_counter() - start
        z = ctx.sample_latents(self.n_generated, G.z_dim, stream=1)
        yaw, pitch = ctx.sample_poses(self.n_generated, stream=1)
        cams = ctx.cam2world(yaw, pitch)
        from gmnr.eval.metrics.inception import image_features
        fake = []
        cached_chunks = 0
        t_render = t_feat = 0.0
        chunk = max(ctx.batch_size, 64)
        for s in range(0, self.n_generated, chunk):  # render and embed in chunks: bounded memory at 50k
            t0 = time.perf_counter()
            images = render(G, z[s:s + chunk], cams[s:s + chunk], ctx)
            t1 = time.perf_counter()
            features, hit = image_features(self.extractor, images, self.generated_cache_dir)
            fake.append(features)
            cached_chunks += hit
            t_render, t_feat = t_render + t1 - t0, t_feat + time.perf_counter() - t1
        fake = np.concatenate(fake)
        warning = small_set_warning(real.shape[0], fake.shape[0])
        if warning:
            import warnings
            warnings.warn(warning, stacklevel=2)
        return {**({"fid_warning": warning} if warning else {}), "fid_min_images": FID_MIN_IMAGES,
                "fid": fid_from_features(real, fake),
                "kid": kernel_inception_distance(real, fake, self.kid_subsets, self.kid_subset_size, seed=ctx.seed),
                "n_generated": int(fake.shape[0]), "n_real": int(real.shape[0]),
                "fid_real_features_cached": bool(cached), "fid_real_seconds": t_real,
                "fid_generated_chunks_cached": cached_chunks,
                "fid_render_seconds": t_render, "fid_feature_seconds": t_feat, "backend": self.backend}
