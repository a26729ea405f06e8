"""gmnr.io.atomic_write, the one atomic writer, and the writers built on it."""
import io
import os

import pytest
import torch

from gmnr.io import atomic_write, link_or_copy
from gmnr.train.checkpoint import save_checkpoint


def test_atomic_write_goes_through_a_hidden_sibling_and_creates_the_folder(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("new")

    path = tmp_path / "sub" / "table.json"
    assert atomic_write(path, write) == path
    assert seen == [tmp_path / "sub" / ".table.json.tmp"] and path.read_text() == "new"
    assert atomic_write(path, write, tmp_name="x.part", durable=True) == path
    assert seen[-1] == tmp_path / "sub" / "x.part"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.json"]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def half(tmp):
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old"


def test_checkpoint_bytes_do_not_depend_on_the_temporary_name(tmp_path):
    """torch names the archive inside a file after the path it is given; the checkpoint's
    temporary holds the writer's pid, so it is written through a file object."""
    payload = {"G": {"w": torch.arange(6.0).reshape(2, 3)}, "config": {"a": 1}}
    written = save_checkpoint(tmp_path, 7, payload, keep_last=2).read_bytes()
    expected = io.BytesIO()
    torch.save({**payload, "step": 7}, expected)
    assert written == expected.getvalue()


def test_link_or_copy_links_on_one_file_system(tmp_path):
    src = tmp_path / "a.png"
    src.write_bytes(b"png")
    link_or_copy(src, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes() == b"png"
    assert os.path.samefile(src, tmp_path / "b.png")
