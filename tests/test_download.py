"""Tests for gmnr.data.download and gmnr.data.registry against a local HTTP server.

The server is a real ThreadingHTTPServer on 127.0.0.1 so the resume/retry logic is exercised
through urllib exactly as in production; it can cut a response short, corrupt it once, or
ignore Range headers, and it records every request so tests can assert what was sent.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from gmnr.data import download as dl
from gmnr.data.registry import (
    CAMERA_FAMILIES,
    DATASETS,
    WEIGHTS,
    DatasetEntry,
    RemoteFile,
    UnknownEntryError,
    WeightsEntry,
    get_dataset,
    get_weights,
)

FAST = dict(backoff_s=0.01, timeout_s=5, progress=False)


# --------------------------------------------------------------------------------------------
# Local HTTP server
# --------------------------------------------------------------------------------------------

@dataclass
class ServerState:
    """Files served and fault injection knobs; ``requests`` logs (path, Range header or None)."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)   # path -> bytes, applied once
    corrupt_once: set[str] = field(default_factory=set)
    fail_once: dict[str, int] = field(default_factory=dict)  # path -> HTTP status, applied once
    ignore_range: bool = False
    html: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _make_handler(state: ServerState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            with state.lock:
                state.requests.append((self.path, self.headers.get("Range")))
                data = state.files.get(self.path)
                cut = state.cut_after.pop(self.path, None)
                corrupt = self.path in state.corrupt_once
                state.corrupt_once.discard(self.path)
                fail = state.fail_once.pop(self.path, None)
            if fail is not None:
                self.send_error(fail)
                return
            if data is None:
                self.send_error(404)
                return
            start = self._range_start()
            if start is not None and start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start or 0:]
            if corrupt:
                body = bytes(b ^ 0x5A for b in body)
            self.send_response(206 if start is not None else 200)
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            ctype = "text/html; charset=utf-8" if self.path in state.html else "application/octet-stream"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _range_start(self) -> int | None:
            header = self.headers.get("Range")
            if state.ignore_range or not header or not header.startswith("bytes="):
                return None
            return int(header[len("bytes="):].split("-")[0])

    return Handler


@pytest.fixture
def server(monkeypatch):
    # urllib consults no_proxy per request, so a proxy configured in CI cannot intercept 127.0.0.1
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _payload(n: int = 300_000, seed: int = 7) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"tail"


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# download_file
# --------------------------------------------------------------------------------------------

def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    server.cut_after["/a.bin"] = 100_000
    dest = tmp_path / "a.bin"
    with pytest.raises(dl.DownloadError, match="partial file"):
        dl.download_file(server.base + "/a.bin", dest, checksum=_sha256(data), retries=0, **FAST)
    part = tmp_path / "a.bin.part"
    assert not dest.exists()
    assert part.stat().st_size == 100_000

    result = dl.download_file(server.base + "/a.bin", dest, checksum=_sha256(data), **FAST)
    assert result == dest and dest.read_bytes() == data
    assert not part.exists()
    assert server.requests == [("/a.bin", None), ("/a.bin", "bytes=100000-")]


def test_cut_connection_is_resumed_within_one_call(server, tmp_path):
    data = _payload()
    server.files["/b.bin"] = data
    server.cut_after["/b.bin"] = 12_345
    dest = dl.download_file(server.base + "/b.bin", tmp_path / "b.bin", expected_size=len(data),
                            checksum=_md5(data), retries=2, chunk_bytes=4096, **FAST)
    assert dest.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=12345-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _payload()
    server.files["/c.bin"] = data
    server.ignore_range = True
    (tmp_path / "c.bin.part").write_bytes(data[:5000])
    dest = dl.download_file(server.base + "/c.bin", tmp_path / "c.bin", checksum=_sha256(data), **FAST)
    assert dest.read_bytes() == data  # 200 answer rewrote the part instead of appending to it
    assert server.requests == [("/c.bin", "bytes=5000-")]


def test_416_means_part_is_already_complete(server, tmp_path):
    data = _payload(50_000)
    server.files["/d.bin"] = data
    (tmp_path / "d.bin.part").write_bytes(data)
    dest = dl.download_file(server.base + "/d.bin", tmp_path / "d.bin", checksum=_md5(data), **FAST)
    assert dest.read_bytes() == data
    assert server.requests == [("/d.bin", f"bytes={len(data)}-")]


def test_corrupted_first_response_is_refetched(server, tmp_path):
    data = _payload()
    server.files["/e.bin"] = data
    server.corrupt_once.add("/e.bin")
    dest = dl.download_file(server.base + "/e.bin", tmp_path / "e.bin", checksum=_md5(data), **FAST)
    assert dest.read_bytes() == data
    assert server.requests == [("/e.bin", None), ("/e.bin", None)]  # second fetch from scratch


def test_persistent_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    wrong = _md5(b"something else")
    dest = tmp_path / "f.bin"
    with pytest.raises(dl.ChecksumError) as info:
        dl.download_file(server.base + "/f.bin", dest, checksum=wrong, **FAST)
    message = str(info.value)
    assert "f.bin" in message and wrong in message and _md5(data) in message
    assert info.value.actual == _md5(data)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()
    assert len(server.requests) == 2  # one re-fetch, then give up


def test_existing_verified_file_is_not_downloaded(server, tmp_path):
    data = _payload()
    server.files["/g.bin"] = data
    dest = tmp_path / "g.bin"
    dest.write_bytes(data)
    assert dl.download_file(server.base + "/g.bin", dest, expected_size=len(data),
                            checksum=_sha256(data), **FAST) == dest
    assert server.requests == []


def test_existing_bad_file_is_downloaded_again(server, tmp_path):
    data = _payload()
    server.files["/h.bin"] = data
    dest = tmp_path / "h.bin"
    dest.write_bytes(b"stale")
    dl.download_file(server.base + "/h.bin", dest, checksum=_sha256(data), **FAST)
    assert dest.read_bytes() == data
    assert server.requests == [("/h.bin", None)]


def test_server_errors_are_retried_with_backoff(server, tmp_path):
    data = _payload(10_000)
    server.files["/s.bin"] = data
    server.fail_once["/s.bin"] = 503
    dest = dl.download_file(server.base + "/s.bin", tmp_path / "s.bin", checksum=_md5(data), **FAST)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2


def test_download_weights_uses_registry_file_name(server, tmp_path):
    data = _payload(20_000)
    server.files["/pretrained/metfaces.pkl"] = data
    remote = RemoteFile("metfaces.pkl", urls=(server.base + "/pretrained/metfaces.pkl",),
                        checksum_note="test")
    entry = WeightsEntry(name="m", description="d", file=remote, resolution=1024, dataset="metfaces",
                         licence="test")
    path = dl.download_weights(entry, tmp_path / "ckpts", **FAST)
    assert path == tmp_path / "ckpts" / "metfaces.pkl" and path.read_bytes() == data
    with pytest.raises(TypeError, match="retry"):
        dl.download_weights(entry, tmp_path / "ckpts", retry=3)


def test_html_page_and_404_are_not_retried(server, tmp_path):
    server.files["/quota"] = b"<html>Google Drive - Quota exceeded</html>"
    server.html.add("/quota")
    with pytest.raises(dl.DownloadError, match="HTML page"):
        dl.download_file(server.base + "/quota", tmp_path / "x.zip", **FAST)
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download_file(server.base + "/missing", tmp_path / "y.zip", **FAST)
    assert len(server.requests) == 2


@pytest.mark.parametrize("url", ["http://h/a/..%2Fevil.zip", "http://h/%2Fetc%2Fpasswd",
                                 "http://h/..", "http://h/dir/"])
def test_url_derived_names_that_escape_are_refused(url):
    with pytest.raises(ValueError, match="refusing download file name"):
        dl.filename_from_url(url)


def test_dest_outside_download_dir_is_refused(tmp_path):
    assert dl.filename_from_url("https://x/s/abc/afhq_v2.zip?dl=1") == "afhq_v2.zip"
    assert dl.safe_dest(tmp_path, "afhq_v2.zip") == tmp_path / "afhq_v2.zip"
    with pytest.raises(ValueError):
        dl.safe_dest(tmp_path, "../x.zip")
    with pytest.raises(ValueError, match="directly inside"):
        dl.download_file("http://127.0.0.1:9/x", tmp_path / "sub" / "x.zip", download_dir=tmp_path, **FAST)


# --------------------------------------------------------------------------------------------
# safe_extract
# --------------------------------------------------------------------------------------------

def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*")] if root.exists() else []


_EVIL_ABS = f"/tmp/gmnr-evil-{uuid.uuid4().hex}"


@pytest.mark.parametrize("kind,build,reason", [
    ("zip-parent", lambda p: _zip(p / "a.zip", {"ok.txt": b"ok", "../evil.txt": b"x"}), "'..'"),
    ("zip-absolute", lambda p: _zip(p / "a.zip", {"ok.txt": b"ok", _EVIL_ABS: b"x"}), "absolute"),
    ("zip-drive", lambda p: _zip(p / "a.zip", {"C:/evil.txt": b"x"}), "absolute"),
    ("zip-symlink", lambda p: _zip(p / "a.zip", {"ok.txt": b"ok"}, symlink="link"), "symbolic link"),
    ("tar-symlink", lambda p: _tar(p / "a.tar.gz", [("ok.txt", b"ok"),
                                                     _link("link", tarfile.SYMTYPE, "/etc/passwd")]),
     "symbolic link"),
    ("tar-hardlink", lambda p: _tar(p / "a.tar.gz", [_link("hard", tarfile.LNKTYPE, "/etc/passwd")]),
     "hard link"),
    ("tar-parent", lambda p: _tar(p / "a.tar.gz", [("ok.txt", b"ok"), ("sub/../../evil.txt", b"x")]),
     "'..'"),
    ("tar-fifo", lambda p: _tar(p / "a.tar.gz", [_link("pipe", tarfile.FIFOTYPE, "")]), "fifo"),
])
def test_malicious_archives_are_rejected_with_nothing_written(tmp_path, kind, build, reason):
    work = tmp_path / "work"
    work.mkdir()
    archive = build(work)
    before = set(_all_files(tmp_path))
    target = tmp_path / "out" / "target"
    with pytest.raises(dl.UnsafeArchiveError) as info:
        dl.safe_extract(archive, target)
    assert archive.name in str(info.value) and reason in str(info.value)
    assert not target.exists()
    assert set(_all_files(tmp_path)) == before  # no target, no staging folder, no evil.txt
    assert not (tmp_path / "evil.txt").exists() and not Path(_EVIL_ABS).exists()


def test_good_zip_and_tar_extract(tmp_path):
    members = {"top/a.txt": b"alpha", "top/sub/b.bin": bytes(range(256)), "c.txt": b""}
    zipped = _zip(tmp_path / "good.zip", {"top/": b"", **members})
    tarred = _tar(tmp_path / "good.tar.gz", list(members.items()))
    for archive in (zipped, tarred):
        target = tmp_path / f"out-{archive.name}"
        files = dl.safe_extract(archive, target)
        assert files == sorted(target / name for name in members)
        for name, data in members.items():
            assert (target / name).read_bytes() == data
        assert not list(tmp_path.glob(".out-*partial*"))
    with pytest.raises(FileExistsError):
        dl.safe_extract(zipped, tmp_path / f"out-{zipped.name}")


# --------------------------------------------------------------------------------------------
# prepare_dataset
# --------------------------------------------------------------------------------------------

def _png(path: Path, size: int, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def _truncated_png() -> bytes:
    """A real PNG cut in half: the header parses, the pixel data does not."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (32, 32), _payload(32 * 32 * 3)[: 32 * 32 * 3]).save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _tiny_entry(**overrides) -> DatasetEntry:
    fields = dict(name="tiny", description="test faces", source_urls=("https://example.invalid",),
                  licence="test", archives=(), expected_count=4, resolution=16, camera_family="ffhq",
                  direct_download=False, manual_instructions="get it by hand, then --from DIR")
    fields.update(overrides)
    return DatasetEntry(**fields)


def test_prepare_from_folder_skips_corrupt_png(tmp_path):
    src = tmp_path / "user"
    _png(src / "images" / "00000" / "00001.png", 16, (255, 0, 0))
    _png(src / "images" / "00000" / "00000.png", 16, (0, 255, 0))
    _png(src / "images" / "01000" / "01000.png", 16, (0, 0, 255))
    (src / "images" / "01000" / "01001.png").write_bytes(_truncated_png())
    (src / "images" / "01000" / "01002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 20)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(src / "images" / "01000" / "01003.JPG", "JPEG")
    (src / "images" / "notes.txt").write_text("not an image")

    with warnings.catch_warnings():
        warnings.simplefilter("error", dl.CountMismatchWarning)  # 4 copied == 4 expected
        summary = dl.prepare_dataset(_tiny_entry(), tmp_path / "raw", tmp_path / "dl", from_dir=src,
                                     progress=False)
    out = tmp_path / "raw" / "images"
    assert sorted(p.name for p in out.iterdir()) == ["00000__00000.png", "00000__00001.png",
                                                     "01000__01000.png", "01000__01003.jpg"]
    assert Image.open(out / "00000__00001.png").getpixel((0, 0)) == (255, 0, 0)
    assert summary["found"] == 6 and summary["copied"] == 4 and summary["skipped_corrupt"] == 2
    assert summary["bytes_downloaded"] == 0 and summary["source"] == "from_dir"
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["dataset"] == "tiny" and manifest["count"] == 4
    assert manifest["skipped_files"] == ["images/01000/01001.png", "images/01000/01002.png"]
    assert not list((tmp_path / "raw").glob(".images.partial-*"))


def test_prepare_resizes_derived_entry_and_warns_on_count(tmp_path):
    src = tmp_path / "user"
    for i in range(2):
        _png(src / f"{i:05d}.png", 64, (10 * i, 20, 30))
    entry = _tiny_entry(resolution=16, derive_from="big", resize_to=16, expected_count=5)
    with pytest.warns(dl.CountMismatchWarning, match="prepared 2 images but the registry expects 5"):
        summary = dl.prepare_dataset(entry, tmp_path / "raw", tmp_path / "dl", from_dir=src, progress=False)
    assert summary["copied"] == 2
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "raw" / "images").iterdir()}
    assert sizes == {"00000.png": (16, 16), "00001.png": (16, 16)}


def test_prepare_downloads_verifies_extracts_and_selects_subset(server, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for split, animal, n in [("train", "cat", 2), ("train", "dog", 1), ("test", "cat", 1)]:
            for i in range(n):
                image = io.BytesIO()
                Image.new("RGB", (16, 16), (i, 0, 0)).save(image, "PNG")
                zf.writestr(f"afhq/{split}/{animal}/{animal}_{i}.png", image.getvalue())
    data = buffer.getvalue()
    server.files["/afhq.zip"] = data
    remote = RemoteFile("afhq.zip", urls=(server.base + "/afhq.zip",), size_bytes=len(data),
                        checksum=_sha256(data), checksum_note="test")
    entry = _tiny_entry(archives=(remote,), direct_download=True, subset=("train", "cat"),
                        expected_count=2, camera_family="afhq")

    summary = dl.prepare_dataset(entry, tmp_path / "raw", tmp_path / "dl", **FAST)
    assert sorted(p.name for p in (tmp_path / "raw" / "images").iterdir()) == ["cat_0.png", "cat_1.png"]
    assert summary["bytes_downloaded"] == len(data) and summary["copied"] == 2
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["archives"][0]["checksum"] == _sha256(data)
    assert manifest["archives"][0]["checksum_source"] == "registry (verified)"

    again = dl.prepare_dataset(entry, tmp_path / "raw", tmp_path / "dl", **FAST)
    assert again["bytes_downloaded"] == 0 and again["copied"] == 2
    assert len(server.requests) == 1  # archive reused, not fetched again


def test_prepare_from_dir_archive_with_wrong_checksum_is_fatal(tmp_path):
    src = tmp_path / "user"
    src.mkdir()
    _zip(src / "faces.zip", {"x/a.png": b"whatever"})
    remote = RemoteFile("faces.zip", checksum=_md5(b"the real archive"), checksum_note="test")
    with pytest.raises(dl.ChecksumError, match="faces.zip"):
        dl.prepare_dataset(_tiny_entry(archives=(remote,)), tmp_path / "raw", tmp_path / "dl",
                           from_dir=src, progress=False)
    assert not (tmp_path / "raw" / "images").exists()


def test_manual_dataset_without_from_dir_explains_how(tmp_path):
    with pytest.raises(dl.ManualDownloadRequired, match="Google Drive") as info:
        dl.prepare_dataset("ffhq256", tmp_path / "raw", tmp_path / "dl", progress=False)
    assert "--from DIR" in str(info.value)
    assert not (tmp_path / "dl").exists()


def test_flat_names_are_stable_and_unique():
    from pathlib import PurePosixPath as P
    names = dl.flat_names([P("afhq/train/cat/a b.png"), P("afhq/train/cat/a_b.png"),
                           P("afhq/train/cat/z.jpg")])
    assert names == ["a_b", "a_b-1", "z"]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

def test_registry_datasets_are_complete():
    assert set(DATASETS) == {"ffhq256", "ffhq512", "ffhq1024", "afhqcat", "metfaces", "celebahq", "afhqv2"}
    for entry in DATASETS.values():
        assert entry.source_urls and all(u.startswith("https://") for u in entry.source_urls)
        if entry.direct_download:
            assert entry.archives and all(a.urls for a in entry.archives), entry.name
        else:
            assert "--from" in entry.manual_instructions, entry.name
        assert entry.expected_count > 0 and entry.resolution > 0
        assert entry.camera_family in CAMERA_FAMILIES == ("ffhq", "metfaces", "afhq")
        for remote in entry.archives + entry.metadata_files:
            assert remote.checksum is not None or remote.checksum_note
    assert get_dataset("ffhq256").derive_from == "ffhq1024" and get_dataset("ffhq256").resize_to == 256
    assert get_dataset("metfaces").expected_count == 1336
    assert get_dataset("ffhq1024").metadata_files[0].checksum == "md5:425ae20f06a4da1d4dc0f46d40ba5fd6"
    assert {get_dataset(n).camera_family for n in ("ffhq512", "celebahq")} == {"ffhq"}


def test_registry_weights_point_at_nvlabs_cdn():
    cdn = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
    assert get_weights("ffhq256").url == cdn + "transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl"
    assert get_weights("ffhq512").url == cdn + "transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl"
    assert get_weights("ffhq1024-pretrained").url == cdn + "ffhq.pkl"
    assert get_weights("metfaces").url == cdn + "metfaces.pkl"
    assert get_weights("afhqcat").url == cdn + "afhqcat.pkl"
    assert all(w.dataset in DATASETS for w in WEIGHTS.values() if w.bundled is None)
    assert get_weights("demo64").dataset == "demo" and get_weights("demo64").bundled.startswith("weights/")


def test_unknown_names_list_known_ones():
    with pytest.raises(KeyError) as info:
        get_dataset("ffhq128")
    assert isinstance(info.value, UnknownEntryError)
    assert "ffhq128" in str(info.value) and "afhqcat" in str(info.value) and "metfaces" in str(info.value)
    with pytest.raises(UnknownEntryError, match="ffhq1024-pretrained"):
        get_weights("nope")


def test_registry_rejects_inconsistent_entries():
    with pytest.raises(ValueError, match="camera_family"):
        _tiny_entry(camera_family="shapenet")
    with pytest.raises(ValueError, match="manual_instructions"):
        _tiny_entry(manual_instructions="")
    with pytest.raises(ValueError, match="hex digits"):
        RemoteFile("a.zip", checksum="md5:abc")
    with pytest.raises(ValueError, match="plain file name"):
        RemoteFile("../a.zip", checksum_note="x")
