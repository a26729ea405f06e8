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
