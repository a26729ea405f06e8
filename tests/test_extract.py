"""safe_extract's tar path, now written by tarfile under PEP 706's data filter: the refusals that
are stricter than the filter, and files that come out as any new file would (the archive's
mode and time are not applied)."""
import io
import os
import stat
import tarfile
import uuid
from pathlib import Path

import pytest

from gmnr.data import download as dl


def _tar(path: Path, files: dict[str, bytes], others: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    """An uncompressed tar of ``files`` (setuid, world-writable, dated 2 January 1970: what the
    extraction must not apply) followed by ``others`` (links, devices, folders)."""
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o4777, 86400
            tf.addfile(info, io.BytesIO(data))
        for info in others:
            tf.addfile(info)
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("member, reason", [
    (f"/tmp/gmnr-evil-{uuid.uuid4().hex}", "absolute path"),  # the data filter alone would strip the '/'
    ("a/../b.txt", "'..'"),  # the data filter alone would allow it: it stays inside
    (_special("inside", tarfile.SYMTYPE, "ok.txt"), "symbolic link"),  # a link that stays inside, too
    (_special("inside-hard", tarfile.LNKTYPE, "ok.txt"), "hard link"),
    (_special("dev", tarfile.CHRTYPE), "device or fifo"),
    (_special("blk", tarfile.BLKTYPE), "device or fifo"),
])
def test_tar_members_the_data_filter_would_pass_or_word_otherwise_are_refused(tmp_path, member, reason):
    special = isinstance(member, tarfile.TarInfo)
    archive = _tar(tmp_path / "a.tar", {"ok.txt": b"ok", **({} if special else {member: b"x"})},
                   (member,) if special else ())
    with pytest.raises(dl.UnsafeArchiveError) as info:
        dl.safe_extract(archive, tmp_path / "out")
    assert "a.tar" in str(info.value) and reason in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]  # nothing written, no staging folder


def test_tar_files_get_normalised_names_and_default_mode_and_time(tmp_path):
    archive = _tar(tmp_path / "a.tar", {"./top//x.txt": b"x", "top\\y.txt": b"yy"},
                   (_special("./top", tarfile.DIRTYPE), _special("./", tarfile.DIRTYPE)))
    files = dl.safe_extract(archive, tmp_path / "out")
    assert files == [tmp_path / "out" / "top" / "x.txt", tmp_path / "out" / "top" / "y.txt"]
    assert [f.read_bytes() for f in files] == [b"x", b"yy"]
    umask = os.umask(0)
    os.umask(umask)
    for f in files:  # not the archive's setuid 0o4777 nor its 1970 time
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask
        assert f.stat().st_mtime > 86400 * 365
