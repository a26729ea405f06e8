import contextlib

import pytest
import torch

from gmnr.data.dataset import sample_indices
from gmnr.train import checkpoint as ckpt


def test_rank_slices_equal_the_single_process_batch_and_epochs_cover_the_set():
    single = sample_indices(5, 0, 1, 8, 37, seed=3)
    split = sample_indices(5, 0, 2, 4, 37, seed=3) + sample_indices(5, 1, 2, 4, 37, seed=3)
    assert single == split
    epoch = [i for s in range(0, 37) for i in sample_indices(s, 0, 1, 1, 37, seed=3)]
    assert sorted(epoch) == list(range(37))
    assert sample_indices(5, 0, 1, 8, 37, seed=4) != single


def test_checkpoints_are_atomic_keep_the_last_k_and_refuse_code(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step)), "config": {"a": [1, 2]}}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert state["step"] == 4 and torch.equal(state["w"], torch.full((2,), 4.0)) and state["config"] == {"a": [1, 2]}
    assert not list(tmp_path.glob(".*tmp*"))

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    torch.save({"w": Evil()}, tmp_path / "step-000000009.pt")
    with pytest.raises(RuntimeError, match="not a loadable gmnr checkpoint"):
        ckpt.load_checkpoint(tmp_path / "step-000000009.pt")
    assert not (tmp_path / "pwned").exists()


def test_gmnr_consistency_term_renders_the_second_view_from_the_same_mpi():
    """The second view joins the main render (one synthesis, so one noise draw), and the term
    equals the photometric loss of the mirrored render warped into the main view."""
    from gmnr.models.gmnr import GMNRConfig, GMNRGenerator
    from gmnr.models.stylegan2 import Discriminator
    from gmnr.render.warp import backward_warp, mirrored_view, photometric_loss
    from gmnr.train.losses import GMPILoss, PosePrior, ViewConsistency
    from tests.test_gmnr_model import _cams, _cfg

    torch.manual_seed(0)
    G = GMNRGenerator(GMNRConfig(**_cfg(resolution=16, planes=4), vdr_enabled=False))
    D = Discriminator(c_dim=16, img_resolution=16, channel_base=256, channel_max=32)
    prior = PosePrior(0.3, 0.15, 2.0, 1.0, (0.0, 0.0, 0.0))
    loss = GMPILoss(G, D, 10.0, 2, "random", contextlib.nullcontext, ViewConsistency(0.5, "mirrored", prior))
    calls = []
    synthesize = G.synthesize
    G.synthesize = lambda *a, **k: calls.append(1) or synthesize(*a, **k)
    z, cams = torch.randn(2, 16), _cams(4)
    total, stats = loss.generator_loss(z, cams)
    assert len(calls) == 1, "main views and second views must come from one synthesis"
    assert torch.isfinite(total) and 0 < stats["loss_consistency"] < 1

    loss.noise_mode = "const"  # deterministic, to recompute the term independently
    _, stats = loss.generator_loss(z, cams)
    with torch.no_grad():
        ws = G.mapping(z, None)
        main_cams = cams[::2]
        second_cams = mirrored_view(main_cams, (0.0, 0.0, 0.0))
        main, second = G.render(ws, main_cams, noise_mode="const"), G.render(ws, second_cams, noise_mode="const")
        k = G.canonical_intrinsics()
        warped, valid = backward_warp((second["image"] + 1) / 2, main["depth"], main_cams, k, second_cams, k)
        expected = photometric_loss(((main["image"] + 1) / 2).clamp(0, 1), warped.clamp(0, 1), valid)
    assert torch.allclose(stats["loss_consistency"], expected, atol=1e-5)


def test_gmnr_consistency_second_view_is_the_plain_render_of_the_mpi():
    """As in the published code, the second view carries no view-dependent colour: its pixels
    equal GMPI's render of the same MPI, while the scored views do get alpha-VdR."""
    from gmnr.models.gmnr import GMNRConfig, GMNRGenerator
    from gmnr.models.gmpi import GMPIGenerator
    from gmnr.models.stylegan2 import Discriminator
    from gmnr.train.losses import GMPILoss, PosePrior, ViewConsistency
    from tests.test_gmnr_model import SMALL_VDR, _cams, _cfg

    torch.manual_seed(0)
    G = GMNRGenerator(GMNRConfig(**_cfg(resolution=16, planes=4), **SMALL_VDR))
    D = Discriminator(c_dim=16, img_resolution=16, channel_base=256, channel_max=32)
    prior = PosePrior(0.3, 0.15, 2.0, 1.0, (0.0, 0.0, 0.0))
    loss = GMPILoss(G, D, 10.0, 2, "const", contextlib.nullcontext, ViewConsistency(0.5, "mirrored", prior))
    renders = []
    render = G.render
    G.render = lambda *a, **k: renders.append((a, k, render(*a, **k))) or renders[-1][2]
    z = torch.randn(2, 16)
    loss.generator_loss(z, _cams(4))
    (ws, cams), kwargs, out = renders[0]
    per_latent = out["n_sampled"].reshape(2, 3)  # 2 scored views + the second view, per latent
    assert (per_latent[:, :2] > 0).all() and (per_latent[:, 2] == 0).all()
    with torch.no_grad():
        plain = GMPIGenerator.render(G, ws, cams, noise_mode="const")["image"].reshape(2, 3, 3, 16, 16)
    images = out["image"].detach().reshape(2, 3, 3, 16, 16)
    assert torch.equal(images[:, 2], plain[:, 2]) and not torch.allclose(images[:, :2], plain[:, :2])
