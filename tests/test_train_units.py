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
    with pytest.raises(RuntimeError, match=r"refused: the file asks for the global .*system.*nothing from the file was run|not a loadable gmnr checkpoint"):
        ckpt.load_checkpoint(tmp_path / "step-000000009.pt")
    assert not (tmp_path / "pwned").exists()


def _gmnr_loss(vdr: bool, noise_mode: str):
    from gmnr.models.gmnr import GMNRConfig, GMNRGenerator
    from gmnr.models.stylegan2 import Discriminator
    from gmnr.render.camera import pose_to_cam2world
    from gmnr.train.losses import GMPILoss, PosePrior, ViewConsistency
    from tests.test_gmnr_model import SMALL_VDR, _cfg

    torch.manual_seed(0)
    vdr_cfg = SMALL_VDR if vdr else {"vdr_enabled": False}
    G = GMNRGenerator(GMNRConfig(**_cfg(resolution=16, planes=4), **vdr_cfg))
    D = Discriminator(c_dim=16, img_resolution=16, channel_base=256, channel_max=32, cmap_dim=16,
                      epilogue_kwargs={"mbstd_group_size": 1})
    with torch.no_grad():
        D.mapping.linear.weight.normal_()  # a camera-dependent D, so the worst view is not always the first
    prior = PosePrior(0.3, 0.15, 2.0, 1.0, (0.0, 0.0, 0.0))
    frame = pose_to_cam2world(torch.zeros(1), torch.zeros(1))[0]
    return G, D, GMPILoss(G, D, 10.0, 3, noise_mode, contextlib.nullcontext, frame,
                          ViewConsistency(0.5, "mirrored", prior))


def test_gmnr_consistency_term_uses_the_worst_view_and_its_mirror_from_one_mpi():
    """GMNR (published train.py): the generator is scored on the worst of N views, and the
    consistency term warps the mirror of that worst view (yaw negated) into it; every view comes from
    one synthesis (one noise draw)."""
    from gmnr.models.factory import camera_label
    from gmnr.render.warp import backward_warp, mirrored_view, photometric_loss
    from tests.test_gmnr_model import _cams

    G, D, loss = _gmnr_loss(vdr=False, noise_mode="random")
    calls = []
    synthesize = G.synthesize
    G.synthesize = lambda *a, **k: calls.append(1) or synthesize(*a, **k)
    z, cams = torch.randn(2, 16), _cams(6)
    total, stats = loss.generator_loss(z, cams)
    assert len(calls) == 1, "main views and second views must come from one synthesis"
    assert torch.isfinite(total) and 0 < stats["loss_consistency"] < 1

    loss.noise_mode = "const"  # deterministic, to recompute the term independently
    _, stats = loss.generator_loss(z, cams)
    with torch.no_grad():
        ws = G.mapping(z, None)
        views = G.render(ws, cams, noise_mode="const")
        logits = D(views["image"], camera_label(cams, loss.label_frame)).reshape(2, 3)
        worst = torch.arange(2) * 3 + logits.argmin(1)
        assert worst.tolist() != [0, 3], "the test needs a worst view other than the first"
        main_cams = cams[worst]
        second_cams = mirrored_view(main_cams, (0.0, 0.0, 0.0))
        second = G.render(ws, second_cams, noise_mode="const")
        k = G.canonical_intrinsics()
        warped, valid = backward_warp((second["image"] + 1) / 2, views["depth"][worst], main_cams, k, second_cams, k)
        expected = photometric_loss(((views["image"][worst] + 1) / 2).clamp(0, 1), warped.clamp(0, 1), valid)
    assert torch.allclose(stats["loss_consistency"], expected, atol=1e-5)


def test_gmnr_consistency_second_view_is_the_plain_render_of_the_mpi():
    """As in the published code, the second view carries no view-dependent colour: its pixels
    equal GMPI's render of the same MPI, while the scored views do get alpha-VdR."""
    from gmnr.models.gmpi import GMPIGenerator
    from tests.test_gmnr_model import _cams

    G, _, loss = _gmnr_loss(vdr=True, noise_mode="const")
    renders = []
    render_mpi = G.render_mpi
    G.render_mpi = lambda *a, **k: renders.append((a, k, render_mpi(*a, **k))) or renders[-1][2]
    loss.generator_loss(torch.randn(2, 16), _cams(6))
    assert len(renders) == 2, "the scored views in one render, the second views in another, of one MPI"
    (mpi, scored_cams), _, scored = renders[0]
    (mpi2, second_cams), _, second = renders[1]
    assert mpi2 is mpi
    assert (scored["n_sampled"] > 0).all() and (second["n_sampled"] == 0).all()
    with torch.no_grad():
        plain = GMPIGenerator.render_mpi(G, mpi, second_cams)["image"]
        plain_scored = GMPIGenerator.render_mpi(G, mpi, scored_cams)["image"]
    assert torch.equal(second["image"].detach(), plain) and not torch.allclose(scored["image"].detach(), plain_scored)
