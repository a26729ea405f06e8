"""Back end of ``gmnr download``: resumable verified downloads, safe extraction, dataset preparation.

Why no download library: pooch (1.9) and fsspec (2026.9, installed) were weighed for fetch +
checksum, and neither replaces the fetch below without losing what it is for. pooch streams
into a temporary file that it deletes on any failure and always starts at byte 0, so it has no
HTTP ``Range`` resume, the one thing a download of tens of gigabytes needs; what it would
replace is the digest check (``file_digest``, a few lines of hashlib), and it brings requests,
platformdirs and packaging. fsspec's HTTP needs aiohttp (not installed); its ``get`` rewrites
the file from byte 0 and verifies nothing, and its ranged reads raise on a server that ignores
``Range`` where this module restarts from zero. Wrapping either would keep the whole resume
layer (the offset, 206 against 200 against 416, the ``Content-Range`` check, the retry of a
truncated body) and add a dependency to the environment that must fetch data before anything
else is installed. So the fetch stays on stdlib ``urllib`` and the libraries do the rest:
hashlib the digests, tarfile (PEP 706's ``data`` filter) the tar extraction.

Design choices and why:
  * Bytes go to ``<dest>.part`` and are renamed only after size and checksum verify, so a
    file named like the archive is always complete; an interrupted transfer is resumed with
    an HTTP ``Range`` request instead of restarting a 90 GB download.
  * Archives are validated member by member before a single byte is written (no path
    traversal, no links, no device nodes; tar members also pass tarfile's ``data`` filter, which
    tarfile applies again as it writes them) and extracted into a temporary sibling folder that
    is renamed into place, so a crash never leaves a half-extracted tree that looks complete.
    What they would expand to is capped before extraction (``download.max_extract_bytes``,
    ``download.max_extract_ratio`` against the archive's size, the free disk space) and, for
    zip, counted again while writing (tarfile writes exactly the declared sizes), so a zip bomb
    is refused instead of filling the disk.
  * Prepared images are flat, sorted, stably named files under ``raw_dir/images`` plus a
    ``manifest.json`` that records where they came from, so later stages (landmarks, poses)
    can key on file names and audits can trace every image to its archive. They are staged and
    swapped in whole (:mod:`gmnr.staging`): files the stage did not write are never replaced,
    and an output that overlaps the images it reads is refused.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from PIL import Image
from tqdm import tqdm

from gmnr.data.images import DATASET_IMAGE_SUFFIXES, DEFAULT_MAX_PIXELS, ImageRefused, open_regular
from gmnr.data.registry import (
    DatasetEntry,
    RemoteFile,
    WeightsEntry,
    get_dataset,
    get_weights,
    parse_checksum,
)
from gmnr.io import atomic_write, link_or_copy

log = logging.getLogger(__name__)

_IMAGE_KINDS = "/".join(s[1:] for s in DATASET_IMAGE_SUFFIXES)  # "png/jpg/jpeg/webp", for messages
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
USER_AGENT = "gmnr-download/1.0 (python-urllib)"
_MAX_BACKOFF_S = 60.0
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

class DownloadError(RuntimeError):
    """A download failed for a reason that retrying here will not fix (or retries ran out)."""


class ChecksumError(DownloadError):
    """A file's size or digest differs from the published value."""

    def __init__(self, path: Path, expected: str, actual: str):
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(f"integrity check failed for {self.path}: expected {expected}, got {actual}")


class UnsafeArchiveError(ValueError):
    """An archive member would escape the target folder or is a link/device, or the archive would
    expand beyond the caps; nothing was extracted (or what was, was removed)."""

    def __init__(self, archive: Path, member: str, reason: str):
        self.archive, self.member, self.reason = Path(archive), member, reason
        super().__init__(f"refusing to extract {self.archive}: member {member!r} {reason}; "
                         "nothing was extracted")


class ManualDownloadRequired(RuntimeError):
    """The official host cannot be fetched by plain HTTP; the message says how to get the data."""


class CountMismatchWarning(UserWarning):
    """The prepared image count differs from the count the registry expects."""


class _Retryable(Exception):
    """Internal: a transient failure (network error, 5xx, truncated body) worth another attempt."""


# --------------------------------------------------------------------------------------------
# Checksums and file names
# --------------------------------------------------------------------------------------------

def file_digest(path: Path, algo: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks so 90 GB archives do not need 90 GB of RAM."""
    hasher = hashlib.new(algo)
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            hasher.update(block)
    return hasher.hexdigest()


def _integrity_problem(path: Path, expected_size: int | None,
                       checksum: tuple[str, str] | None) -> tuple[str, str] | None:
    """Return (expected, actual) describing the first mismatch, or None when the file verifies.

    Size is checked first because it is free and catches truncation without hashing.
    """
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"{expected_size} bytes", f"{size} bytes"
    if checksum is not None:
        algo, want = checksum
        got = file_digest(path, algo)
        if got != want:
            return f"{algo}:{want}", f"{algo}:{got}"
    return None


def _check_plain_name(name: str, folder: Path | None = None) -> None:
    """Refuse file names that could place a download outside its folder."""
    bad = (not name or name in {".", ".."} or "/" in name or "\\" in name or ".." in name
           or "\x00" in name or _DRIVE_LETTER.match(name) is not None)
    if bad:
        where = f" inside {folder}" if folder is not None else ""
        raise ValueError(f"refusing download file name {name!r}: it must be a plain file name{where} "
                         "(no '/', '\\', '..', drive letter or absolute path)")


def safe_dest(download_dir: Path, name: str) -> Path:
    """``download_dir / name`` after checking that ``name`` cannot escape ``download_dir``."""
    download_dir = Path(download_dir)
    _check_plain_name(name, download_dir)
    dest = download_dir / name
    if dest.resolve().parent != download_dir.resolve():
        raise ValueError(f"refusing download file name {name!r}: resolves outside {download_dir}")
    return dest


def filename_from_url(url: str) -> str:
    """Last path segment of ``url`` (query dropped, %-escapes decoded), validated as a plain name.

    Decoding happens before validation so ``..%2Fevil`` cannot sneak a separator through.
    """
    segment = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    _check_plain_name(segment)
    return segment


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------

@dataclass
class _Transfer:
    """Bytes moved over the network in one download call (for the prepare summary)."""

    bytes: int = 0


def download_file(url: str, dest: Path, expected_size: int | None = None,
                  checksum: str | None = None, retries: int = 5, backoff_s: float = 1.0,
                  timeout_s: float = 60, progress: bool = True, chunk_bytes: int = 1 << 20,
                  *, download_dir: Path | None = None, transfer: _Transfer | None = None) -> Path:
    """Download ``url`` to ``dest`` with resume, retries and verification; return ``dest``.

    ``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"``. An existing ``dest`` that verifies
    is returned without any request; one that does not verify is fetched again. Network
    errors, 5xx/408/429 answers and truncated bodies are retried ``retries`` times with
    exponential backoff, resuming the ``.part`` file. A complete file whose size or digest is
    wrong is deleted and fetched once more from scratch (this uses one retry); if it is still
    wrong, ``ChecksumError`` is raised and neither ``dest`` nor the ``.part`` file is left.
    With ``download_dir``, ``dest`` must be a plain file name directly inside it. ``transfer``
    adds up the bytes moved over the network (prepare's summary).
    """
    dest, transfer = Path(dest), transfer if transfer is not None else _Transfer()
    if download_dir is not None and dest.parent.resolve() != Path(download_dir).resolve():
        raise ValueError(f"refusing to write {dest}: it must be a plain file name directly inside "
                         f"{download_dir}")
    _check_plain_name(dest.name, download_dir)
    spec = parse_checksum(checksum) if checksum else None
    if dest.exists():
        problem = _integrity_problem(dest, expected_size, spec)
        if problem is None:
            log.info("%s already present and verified; not downloading", dest)
            return dest
        log.warning("%s exists but fails verification (expected %s, got %s); downloading again",
                    dest, *problem)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    refetched = False
    while True:
        try:
            _fetch_into_part(url, part, expected_size, timeout_s, progress, chunk_bytes, transfer)
        except _Retryable as exc:
            failures += 1
            if failures > retries:
                raise DownloadError(f"giving up on {url} -> {dest} after {failures} attempts: {exc}; "
                                    f"the partial file {part} is kept and will be resumed") from exc
            _sleep_backoff(backoff_s, failures, f"{dest.name}: {exc}")
            continue
        problem = _integrity_problem(part, expected_size, spec)
        if problem is None:
            os.replace(part, dest)
            return dest
        part.unlink()
        if refetched or failures >= retries:
            raise ChecksumError(dest, *problem)
        refetched = True
        failures += 1
        _sleep_backoff(backoff_s, failures,
                       f"{dest.name} failed verification (expected {problem[0]}, got {problem[1]}); "
                       "fetching again from scratch")


def _sleep_backoff(backoff_s: float, failures: int, why: str) -> None:
    delay = min(_MAX_BACKOFF_S, backoff_s * 2 ** (failures - 1))
    log.warning("%s; retrying in %.1f s", why, delay)
    time.sleep(delay)


def _fetch_into_part(url: str, part: Path, expected_size: int | None, timeout_s: float,
                     progress: bool, chunk_bytes: int, transfer: _Transfer) -> None:
    """One HTTP attempt that appends to (206) or rewrites (200) ``part``.

    Returns normally when the server says the body is complete; verification is the caller's
    job. Raises ``_Retryable`` for transient problems and ``DownloadError`` for permanent ones.
    """
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()  # larger than the file can be: not a prefix of it
        offset = 0
    if expected_size is not None and offset == expected_size:
        return  # complete already; let verification decide
    response = _open(url, offset, timeout_s)
    if response is None:  # 416: the range starts at or past the end, so the part is complete
        return
    with response:
        mode, offset = _write_mode(response, part, offset)
        total = _total_size(response, offset, expected_size)
        received = _stream(response, part, mode, offset, total, progress, chunk_bytes, transfer)
    if total is not None and offset + received < total:
        raise _Retryable(f"connection closed after {offset + received} of {total} bytes")


def _open(url: str, offset: int, timeout_s: float) -> http.client.HTTPResponse | None:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
    content_type = response.headers.get("Content-Type", "")
    if content_type.startswith("text/html"):
        response.close()
        raise DownloadError(
            f"{url} returned an HTML page instead of file data (a quota, confirmation or login page?); "
            "download the file in a browser and use --from DIR")
    return response


def _write_mode(response: http.client.HTTPResponse, part: Path, offset: int) -> tuple[str, int]:
    """Decide append vs rewrite from the status: 206 at our offset appends, anything else restarts."""
    if response.status == 206:
        start = _content_range_start(response.headers.get("Content-Range"))
        if start == offset:
            return "ab", offset
        part.unlink(missing_ok=True)
        raise _Retryable(f"server sent range starting at {start}, asked for {offset}; restarting")
    if offset:
        log.info("server ignored the Range request for %s; restarting from byte 0", part.name)
    return "wb", 0


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", header or "")
    return int(match.group(1)) if match else None


def _total_size(response: http.client.HTTPResponse, offset: int, expected_size: int | None) -> int | None:
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return offset + int(length)
    return expected_size


def _stream(response: http.client.HTTPResponse, part: Path, mode: str, offset: int,
            total: int | None, progress: bool, chunk_bytes: int, transfer: _Transfer) -> int:
    received = 0
    with open(part, mode) as handle, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=part.name[:-len(".part")],
                                          disable=not progress, leave=False) as bar:
        try:
            while chunk := response.read(chunk_bytes):
                handle.write(chunk)
                received += len(chunk)
                transfer.bytes += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"{type(exc).__name__} after {offset + received} bytes: {exc}") from exc
    return received


_DOWNLOAD_OPTIONS = frozenset({"retries", "backoff_s", "timeout_s", "chunk_bytes"})


def _check_options(options: dict[str, Any]) -> None:
    """Reject misspelt options instead of silently using defaults."""
    unknown = sorted(set(options) - _DOWNLOAD_OPTIONS)
    if unknown:
        raise TypeError(f"unknown download option(s) {unknown}; allowed: {sorted(_DOWNLOAD_OPTIONS)}")


def download_remote(remote: RemoteFile, download_dir: Path, progress: bool = True, *,
                    transfer: _Transfer | None = None, **download_options: Any) -> Path:
    """Fetch a registry file into ``download_dir``, trying its mirrors in order."""
    _check_options(download_options)
    download_dir = Path(download_dir)
    if not remote.urls:
        raise ManualDownloadRequired(f"{remote.filename} has no direct download URL")
    dest = safe_dest(download_dir, remote.filename)
    errors = []
    for url in remote.urls:
        try:
            return download_file(url, dest, remote.size_bytes, remote.checksum, progress=progress,
                                 download_dir=download_dir, transfer=transfer, **download_options)
        except ChecksumError:
            raise
        except DownloadError as exc:
            errors.append(f"{url}: {exc}")
    raise DownloadError(f"could not download {remote.filename}:\n  " + "\n  ".join(errors))


def download_weights(name: str | WeightsEntry, weights_dir: Path, progress: bool = True,
                     **download_options: Any) -> Path:
    """The file of registered pretrained weights: a bundled one verified in place, else the
    download into ``weights_dir``. Returns its path."""
    entry = name if isinstance(name, WeightsEntry) else get_weights(name)
    if entry.bundled is not None:
        from gmnr.config import PROJECT_ROOT
        path = PROJECT_ROOT / entry.bundled
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the weights '{entry.name}' ship with the project but the file is "
                                    f"missing (restore it with `git checkout -- {entry.bundled}`)")
        problem = _integrity_problem(path, entry.file.size_bytes, parse_checksum(entry.file.checksum))
        if problem is not None:
            raise ChecksumError(path, *problem)
        return path
    return download_remote(entry.file, Path(weights_dir), progress, **download_options)


def resolve_weights(source: str, weights_dir: Path, progress: bool = True) -> Path:
    """``source`` as a file: a registry name (gmnr/data/registry.py WEIGHTS) or a path to a
    ``.pkl`` / ``.pt`` file."""
    path = Path(source).expanduser()
    if path.suffix in (".pkl", ".pt"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pretrained weights file not found")
        return path
    return download_weights(source, weights_dir, progress)


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Member:
    """An archive member that passed validation: where it goes and whether it is a folder."""

    relpath: PurePosixPath
    is_dir: bool
    handle: Any  # ZipInfo or TarInfo


def is_archive(path: Path) -> bool:
    """True for the archive types ``safe_extract`` handles, judged by the file name."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


DEFAULT_MAX_EXTRACT_BYTES = 200_000_000_000  # params download.max_extract_bytes
DEFAULT_MAX_EXTRACT_RATIO = 100.0  # params download.max_extract_ratio


def safe_extract(archive: Path, target_dir: Path, max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
                 max_ratio: float = DEFAULT_MAX_EXTRACT_RATIO) -> list[Path]:
    """Extract a zip or tar(.gz/.bz2/.xz) into ``target_dir`` and return the extracted files.

    Every member is validated first; one unsafe member (path outside ``target_dir``, absolute
    path, drive letter, symlink, hardlink, device, fifo) raises ``UnsafeArchiveError`` and
    nothing is written. So does an archive whose members add up to more than ``max_bytes``,
    more than ``max_ratio`` times the archive's own size, or more than the free disk space.
    Extraction goes to a hidden temporary sibling that is renamed onto ``target_dir`` at the
    end. Tar members are written by tarfile itself under PEP 706's ``data`` filter (which
    writes exactly the size a header declares); zip has no such filter, so its bytes are counted
    while writing and a member that yields more than its header declared is refused and the
    partial extraction removed. ``target_dir`` must be absent or empty.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())):
        raise FileExistsError(f"cannot extract {archive} into {target_dir}: it exists and is not empty")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = _validate_zip(archive, zf, target_dir)
            _check_expansion(archive, members, target_dir, max_bytes, max_ratio)
            return _extract_staged(members, target_dir, lambda staging: _write_zip(archive, zf, members, staging))
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            members = _validate_tar(archive, tf, target_dir)
            _check_expansion(archive, members, target_dir, max_bytes, max_ratio)
            return _extract_staged(members, target_dir, lambda staging: _write_tar(archive, tf, members, staging))
    raise ValueError(f"{archive} is neither a zip nor a tar archive")


def _member_size(member: "_Member") -> int:
    handle = member.handle
    return int(handle.file_size if isinstance(handle, zipfile.ZipInfo) else handle.size)


def _check_expansion(archive: Path, members: list["_Member"], target_dir: Path, max_bytes: int,
                     max_ratio: float) -> None:
    """Refuse, before writing anything, an archive that would expand beyond the caps."""
    total = sum(_member_size(m) for m in members if not m.is_dir)
    packed = max(archive.stat().st_size, 1)
    if total > max_bytes:
        raise UnsafeArchiveError(archive, f"<{len(members)} members>", f"would expand to {total} bytes, more than "
                                 f"download.max_extract_bytes = {max_bytes}")
    if total / packed > max_ratio:
        raise UnsafeArchiveError(archive, f"<{len(members)} members>", f"would expand {total / packed:.0f}x (to {total} "
                                 f"bytes from {packed}), more than download.max_extract_ratio = {max_ratio:g} "
                                 f"(a zip bomb?)")
    probe = target_dir.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if total > free:
        raise UnsafeArchiveError(archive, f"<{len(members)} members>", f"would expand to {total} bytes but {probe} "
                                 f"has {free} bytes free")


def _safe_relpath(archive: Path, name: str, target_dir: Path) -> PurePosixPath | None:
    """Validated relative path of a member, or None for a no-op entry such as ``./``."""
    if "\x00" in name:
        raise UnsafeArchiveError(archive, name, "contains a NUL byte")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE_LETTER.match(posix):
        raise UnsafeArchiveError(archive, name, "has an absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(archive, name, "contains a '..' component")
    if not parts:
        return None
    relpath = PurePosixPath(*parts)
    root = target_dir.resolve()
    if not (root / relpath).resolve().is_relative_to(root):
        raise UnsafeArchiveError(archive, name, f"resolves outside {target_dir}")
    return relpath


def _validate_zip(archive: Path, zf: zipfile.ZipFile, target_dir: Path) -> list[_Member]:
    members = []
    for info in zf.infolist():
        # Unix zips keep st_mode in the high 16 bits; the type bits are 0 when the writer
        # stored permissions only (Python's writestr does), which means a regular file.
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if file_type == stat.S_IFLNK:
            raise UnsafeArchiveError(archive, info.filename, "is a symbolic link")
        if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(archive, info.filename, "is a device, fifo or socket")
        relpath = _safe_relpath(archive, info.filename, target_dir)
        if relpath is not None:
            members.append(_Member(relpath, info.is_dir(), info))
    return members


def _validate_tar(archive: Path, tf: tarfile.TarFile, target_dir: Path) -> list[_Member]:
    """Refuse the whole archive on its first unsafe member, before anything is written. PEP 706's
    data filter judges devices, fifos and escapes; our rules on top are stricter: no links at all
    (the filter allows links that stay inside), no absolute names (the filter strips the '/') and
    no '..' component even when it stays inside (the filter allows 'a/../b')."""
    members = []
    for info in tf.getmembers():
        if info.issym() or info.islnk():
            raise UnsafeArchiveError(archive, info.name, f"is a {'symbolic' if info.issym() else 'hard'} "
                                     f"link to {info.linkname!r}")
        relpath = _safe_relpath(archive, info.name, target_dir)
        try:
            tarfile.data_filter(info, str(target_dir))
        except tarfile.SpecialFileError:
            raise UnsafeArchiveError(archive, info.name, "is a device or fifo") from None
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(archive, info.name, f"is refused by tarfile's data filter ({exc})") from None
        if not (info.isreg() or info.isdir()):  # tarfile would write an unknown type as a regular file
            raise UnsafeArchiveError(archive, info.name, f"has unsupported tar type {info.type!r}")
        if relpath is not None:  # written under the normalised name ('a\\b' and './a//b' as 'a/b')
            members.append(_Member(relpath, info.isdir(), info.replace(name=relpath.as_posix(), deep=False)))
    return members


def _tar_data_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """PEP 706's ``data`` filter, leaving mode and time to the system's defaults as for any new
    file (what the extraction wrote before tarfile did it), not the archive's."""
    return tarfile.data_filter(member, dest).replace(mode=None, mtime=None, deep=False)


def _write_tar(archive: Path, tf: tarfile.TarFile, members: list[_Member], staging: Path) -> None:
    """tarfile writes the validated members, applying the data filter once more as it goes."""
    try:
        tf.extractall(staging, members=[m.handle for m in members], filter=_tar_data_filter)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(archive, exc.tarinfo.name, f"is refused by tarfile's data filter ({exc})") from None


def _write_zip(archive: Path, zf: zipfile.ZipFile, members: list[_Member], staging: Path) -> None:
    for member in members:
        out = staging.joinpath(*member.relpath.parts)
        if member.is_dir:
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        declared = _member_size(member)
        with zf.open(member.handle) as src, open(out, "wb") as dst:
            written = 0
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > declared:  # never trust a header for how much will come out
                    raise UnsafeArchiveError(archive, str(member.relpath), f"yields more than the {declared} "
                                             f"bytes its header declares")
                dst.write(chunk)


def _extract_staged(members: list[_Member], target_dir: Path, write_members) -> list[Path]:
    """``write_members(staging)`` into a hidden sibling that is renamed onto ``target_dir`` when
    complete and removed when not; returns the extracted files."""
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    # A killed extraction leaves .<name>.partial-* behind; the next one removes them (they are ours).
    for stale in target_dir.parent.glob(f".{target_dir.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = target_dir.parent / f".{target_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        write_members(staging)
        if target_dir.exists():
            target_dir.rmdir()  # checked empty above
        os.replace(staging, target_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted({target_dir.joinpath(*m.relpath.parts) for m in members if not m.is_dir})


# --------------------------------------------------------------------------------------------
# Dataset preparation
# --------------------------------------------------------------------------------------------

@dataclass
class _Sources:
    """What ``prepare_dataset`` will read: archives to extract and/or folders of images."""

    archives: list[Path]
    folders: list[Path]
    archive_records: list[dict]
    kind: str
    bytes_downloaded: int = 0


def prepare_dataset(name: str | DatasetEntry, raw_dir: Path, download_dir: Path,
                    from_dir: Path | None = None, progress: bool = True,
                    workers: int | None = None, max_pixels: int | None = None,
                    max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
                    max_extract_ratio: float = DEFAULT_MAX_EXTRACT_RATIO, **download_options: Any) -> dict:
    """Download (or take from ``from_dir``), extract and collect a dataset into ``raw_dir/images``.

    ``name`` is a registry name or a ``DatasetEntry``. With ``from_dir`` the user's files are
    used: the archive(s) the registry names (verified where a checksum is published), any
    other zip/tar there, or an already-extracted folder of images. Without it the archives
    are downloaded when the entry allows direct download, else ``ManualDownloadRequired`` is
    raised with the entry's instructions. Images (png/jpg/jpeg/webp, recursive, filtered by
    the entry's ``subset``) become flat, sorted, stable file names (hardlinked or copied; resized
    to PNG with LANCZOS when the entry derives from another resolution). Unreadable images are
    skipped and counted, and so are images whose header declares more than ``max_pixels`` pixels
    (never decoded). ``raw_dir/manifest.json`` records the provenance; the returned dict
    summarises counts, bytes downloaded and seconds. ``raw_dir/images``, the manifest and the
    metadata files are staged and swapped in together (:mod:`gmnr.staging`).
    """
    from gmnr.staging import StagedOutput
    entry = name if isinstance(name, DatasetEntry) else get_dataset(name)
    _check_options(download_options)
    started = time.monotonic()
    raw_dir, download_dir = Path(raw_dir), Path(download_dir)
    from_path = None if from_dir is None else Path(from_dir)
    outputs = ["images", "manifest.json", *(m.filename for m in entry.metadata_files)]
    staged = StagedOutput(raw_dir, "download", outputs, inputs=[from_path, download_dir], legacy=_legacy_claims)
    staged.preflight()  # before any download: an output inside the sources, or someone else's files
    sources = _acquire(entry, download_dir, from_path, progress, download_options)
    roots = list(sources.folders)
    for archive, record in zip(sources.archives, sources.archive_records):
        roots.append(_extract_cached(archive, record, download_dir / "extracted", max_extract_bytes,
                                     max_extract_ratio))
    images = _collect_images(roots, entry.subset)
    if not images:
        raise FileNotFoundError(f"{entry.name}: no {_IMAGE_KINDS} images found under "
                                f"{', '.join(map(str, roots))}" + _subset_hint(entry))
    names = flat_names([rel for _, rel in images])
    with staged:
        new = staged.staging / "new"
        # Photos that are not aligned yet come in any size: none is "unexpected" (the align stage crops them)
        result = _materialise(images, names, new, entry.resize_to, entry.resolution if entry.aligned else None,
                              workers, progress,
                              max_pixels or DEFAULT_MAX_PIXELS)
        if not result["copied"]:
            raise ValueError(f"{entry.name}: none of the {len(images)} images found could be read "
                             f"({len(result['corrupt'])} unreadable, {result['too_large']} over images.max_pixels)")
        metadata = _copy_metadata(entry, from_path, new)
        for record in metadata:  # the paths they will have once swapped in
            record["path"] = str(raw_dir / Path(record["path"]).name)
        _write_manifest(entry, new, sources, from_dir, len(images), result, metadata)
    manifest_path = raw_dir / "manifest.json"
    summary = {
        "dataset": entry.name,
        "source": sources.kind,
        "found": len(images),
        "copied": result["copied"],
        "skipped_corrupt": len(result["corrupt"]),
        "skipped_too_large": result["too_large"],
        "unexpected_size": result["unexpected_size"],
        "expected_count": entry.expected_count,
        "bytes_downloaded": sources.bytes_downloaded,
        "seconds": round(time.monotonic() - started, 3),
        "images_dir": str(raw_dir / "images"),
        "manifest": str(manifest_path),
    }
    if entry.expected_count is not None and result["copied"] != entry.expected_count:
        warnings.warn(CountMismatchWarning(
            f"{entry.name}: prepared {result['copied']} images but the registry expects "
            f"{entry.expected_count} (found {len(images)}, skipped {len(result['corrupt'])} unreadable)"),
            stacklevel=2)
    return summary


def _subset_hint(entry: DatasetEntry) -> str:
    if not entry.subset:
        return ""
    return f" (only images inside a '{'/'.join(entry.subset)}' folder are used)"


def _acquire(entry: DatasetEntry, download_dir: Path, from_dir: Path | None, progress: bool,
             options: dict[str, Any]) -> _Sources:
    if from_dir is not None:
        return _sources_from_user(entry, from_dir)
    if not entry.direct_download:
        raise ManualDownloadRequired(
            f"{entry.name} cannot be downloaded automatically. {entry.manual_instructions}")
    transfer = _Transfer()
    paths, records = [], []
    for remote in entry.archives:
        path = download_remote(remote, download_dir, progress, transfer=transfer, **options)
        paths.append(path)
        records.append(_archive_record(path, remote))
    return _Sources(paths, [], records, "download", transfer.bytes)


def _sources_from_user(entry: DatasetEntry, from_dir: Path) -> _Sources:
    """Pick what to read from ``--from``: named archives, else images, else any archives."""
    if from_dir.is_file():
        remote = next((r for r in entry.archives if r.filename == from_dir.name), None)
        return _Sources([from_dir], [], [_archive_record(from_dir, remote)], "from_dir")
    if not from_dir.is_dir():
        raise FileNotFoundError(f"--from {from_dir}: no such file or folder")
    named = [(r, from_dir / r.filename) for r in entry.archives if (from_dir / r.filename).is_file()]
    if named:
        missing = [r.filename for r in entry.archives if not (from_dir / r.filename).is_file()]
        if missing:
            raise FileNotFoundError(f"--from {from_dir}: found {[p.name for _, p in named]} "
                                    f"but not {missing}; {entry.name} needs all of them")
        return _Sources([p for _, p in named], [], [_archive_record(p, r) for r, p in named], "from_dir")
    if _collect_images([from_dir], entry.subset, limit=1):
        return _Sources([], [from_dir], [], "from_dir")
    others = sorted(p for p in from_dir.iterdir() if p.is_file() and is_archive(p))
    if others:
        log.warning("%s: using archives %s that the registry does not name; they cannot be "
                    "checked against a published checksum", entry.name, [p.name for p in others])
        return _Sources(others, [], [_archive_record(p, None) for p in others], "from_dir")
    if not entry.archives:  # a custom folder: any archive or image would have done
        raise FileNotFoundError(f"--from {from_dir}: no images ({_IMAGE_KINDS}, searched recursively; hidden "
                                f"folders skipped) and no archive ({', '.join(sorted(ARCHIVE_SUFFIXES))}) found "
                                f"for dataset {entry.name}; nothing written")
    expected = ", ".join(r.filename for r in entry.archives) or "no fixed archive name"
    raise FileNotFoundError(f"--from {from_dir}: holds neither the archive(s) of {entry.name} "
                            f"({expected}) nor any {_IMAGE_KINDS} images{_subset_hint(entry)}")


def _archive_record(path: Path, remote: RemoteFile | None) -> dict:
    """Verify a local archive against the registry (if it publishes values) and describe it.

    When the registry has a checksum, a mismatch is fatal (``ChecksumError``) and the
    verified digest is recorded; otherwise a sha256 is computed so the manifest still pins
    exactly which bytes the images came from.
    """
    spec = parse_checksum(remote.checksum) if remote is not None and remote.checksum else None
    size = remote.size_bytes if remote is not None else None
    problem = _integrity_problem(path, size, spec)
    if problem is not None:
        raise ChecksumError(path, *problem)
    if spec is not None:
        checksum, origin = f"{spec[0]}:{spec[1]}", "registry (verified)"
    else:
        checksum, origin = f"sha256:{file_digest(path, 'sha256')}", "computed (none published)"
    return {"file": path.name, "path": str(path), "bytes": path.stat().st_size,
            "checksum": checksum, "checksum_source": origin}


def _legacy_claims(raw_dir: Path) -> set[str] | None:
    """What a download from before output records can be shown to have written: its manifest,
    the metadata files it lists, and the images folder when the manifest's count matches it."""
    manifest = json.loads((Path(raw_dir) / "manifest.json").read_text())
    images = Path(raw_dir) / "images"
    files = sorted(p.name for p in images.iterdir()) if images.is_dir() else []
    if len(files) != manifest.get("count"):
        return None
    return {"manifest.json", *(f"images/{f}" for f in files),
            *(Path(m["path"]).name for m in manifest.get("metadata_files", []))}


def _extract_cached(archive: Path, record: dict, extracted_root: Path,
                    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES, max_ratio: float = DEFAULT_MAX_EXTRACT_RATIO) -> Path:
    """Extract once per archive content: the folder name carries the digest, and safe_extract's
    rename makes an existing folder a complete one."""
    suffix = max((s for s in ARCHIVE_SUFFIXES if archive.name.lower().endswith(s)), key=len, default="")
    stem = archive.name[: len(archive.name) - len(suffix)]  # the longest: x.tar.gz -> x, not x.tar
    digest = record["checksum"].partition(":")[2][:12]
    target = extracted_root / f"{stem}-{digest}"
    if target.is_dir() and any(target.iterdir()):
        log.info("reusing extracted %s", target)
        return target
    safe_extract(archive, target, max_bytes, max_ratio)
    return target


def _collect_images(roots: list[Path], subset: tuple[str, ...],
                    limit: int | None = None) -> list[tuple[Path, PurePosixPath]]:
    """(absolute path, path relative to its root) of every image, sorted for stable naming."""
    found: list[tuple[Path, PurePosixPath]] = []
    for root in roots:
        batch = []
        root_parts = root.resolve().parts  # so --from .../train/cat matches subset ("train", "cat")
        for path in _walk_images(root):
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if _in_subset(root_parts + rel.parts[:-1], subset):
                batch.append((path, rel))
                if limit is not None and len(found) + len(batch) >= limit:
                    return found + batch
        found.extend(sorted(batch, key=lambda item: item[1].as_posix()))
    return found


def _walk_images(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for filename in sorted(filenames):
            if not filename.startswith(".") and Path(filename).suffix.lower() in DATASET_IMAGE_SUFFIXES:
                yield Path(dirpath) / filename


def _in_subset(folders: tuple[str, ...], subset: tuple[str, ...]) -> bool:
    """True when ``subset`` occurs as consecutive folder names in ``folders``."""
    if not subset:
        return True
    width = len(subset)
    return any(folders[i:i + width] == subset for i in range(len(folders) - width + 1))


def flat_names(relpaths: list[PurePosixPath]) -> list[str]:
    """Flat, stable stems for images: relative folders joined by ``__`` after dropping the
    folders every image shares (so ``afhq/train/cat/x.jpg`` becomes ``x``). Characters outside
    ``[A-Za-z0-9._-]`` become ``_``; rare collisions get ``-1``, ``-2`` in sorted order."""
    folder_lists = [rel.parts[:-1] for rel in relpaths]
    common = 0
    if folder_lists:
        shortest = min(len(f) for f in folder_lists)
        while common < shortest and len({f[common] for f in folder_lists}) == 1:
            common += 1
    used: set[str] = set()
    names = []
    for rel in relpaths:
        parts = list(rel.parts[common:-1]) + [PurePosixPath(rel.name).stem]
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", "__".join(parts))
        candidate, n = stem, 0
        while candidate.lower() in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate.lower())
        names.append(candidate)
    return names


def _materialise(images: list[tuple[Path, PurePosixPath]], names: list[str], out_root: Path,
                 resize_to: int | None, resolution: int | None, workers: int | None,
                 progress: bool, max_pixels: int) -> dict:
    """Write the images into ``out_root/images`` (inside the stage's staging folder)."""
    out_dir = out_root / "images"
    out_dir.mkdir(parents=True)
    corrupt: list[str] = []
    unexpected = too_large = 0
    copied = 0
    jobs = [(src, out_dir, stem, resize_to, resolution, max_pixels) for (src, _), stem in zip(images, names)]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(_process_image, jobs)
        for (_, rel), status in tqdm(zip(images, results), total=len(jobs), unit="img",
                                     desc="images", disable=not progress, leave=False):
            if status == "corrupt":
                corrupt.append(rel.as_posix())
                continue
            if status == "too_large":
                too_large += 1
                continue
            copied += 1
            unexpected += status == "unexpected_size"
    if corrupt:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(corrupt), corrupt[0])
    if too_large:
        log.warning("skipped %d image(s) of more than images.max_pixels = %d pixels (not decoded)", too_large,
                    max_pixels)
    if unexpected:
        log.warning("%d image(s) are not %dx%d%s", unexpected, resolution, resolution,
                    " before resizing (non-square)" if resize_to else "")
    return {"copied": copied, "corrupt": corrupt, "unexpected_size": unexpected, "too_large": too_large}


def _process_image(job: tuple[Path, Path, str, int | None, int, int]) -> str:
    """Check one image and write it out; returns "ok", "unexpected_size", "too_large" or "corrupt".

    PNGs are checked with ``verify()`` (CRC of every chunk, catches truncation and bit flips
    without decoding); other formats are fully decoded because ``verify()`` does not check them.
    Only regular files are opened, and the pixel count in the header is checked before decoding.
    """
    src, out_dir, stem, resize_to, resolution, max_pixels = job
    try:
        with open_regular(src) as f, Image.open(f) as image:
            size = image.size
            if size[0] * size[1] > max_pixels:
                log.debug("%s: %d x %d pixels exceeds images.max_pixels", src, *size)
                return "too_large"
            if image.format == "PNG" and resize_to is None:
                image.verify()
            else:
                image.load()
            if resize_to is not None:
                _save_resized(image, out_dir / f"{stem}.png", resize_to)
                return "ok" if size[0] == size[1] else "unexpected_size"
    except Image.DecompressionBombError:
        return "too_large"
    except (OSError, SyntaxError, ValueError, ImageRefused) as exc:
        log.debug("unreadable image %s: %s", src, exc)
        return "corrupt"
    link_or_copy(src, out_dir / f"{stem}{src.suffix.lower()}")
    return "ok" if resolution is None or size == (resolution, resolution) else "unexpected_size"


def _save_resized(image: Image.Image, dest: Path, size: int) -> None:
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    image.save(dest, format="PNG")


def _copy_metadata(entry: DatasetEntry, from_dir: Path | None, raw_dir: Path) -> list[dict]:
    """Verify and keep the entry's metadata files (e.g. ffhq-dataset-v2.json) found in --from."""
    records = []
    if from_dir is None or not from_dir.is_dir():
        return records
    for remote in entry.metadata_files:
        path = from_dir / remote.filename
        if not path.is_file():
            continue
        record = _archive_record(path, remote)
        dest = safe_dest(raw_dir, remote.filename)
        dest.unlink(missing_ok=True)
        link_or_copy(path, dest)
        record["path"] = str(dest)
        records.append(record)
    return records


def _write_manifest(entry: DatasetEntry, raw_dir: Path, sources: _Sources, from_dir: Path | None,
                    found: int, result: dict, metadata: list[dict]) -> Path:
    manifest = {
        "dataset": entry.name,
        "description": entry.description,
        "camera_family": entry.camera_family,
        "resolution": entry.resolution,
        "derive_from": entry.derive_from,
        "resize_to": entry.resize_to,
        "subset": list(entry.subset),
        "source": {
            "kind": sources.kind,
            "from_dir": None if from_dir is None else str(from_dir),
            "urls": [url for remote in entry.archives for url in remote.urls],
            "official_pages": list(entry.source_urls),
        },
        "licence": entry.licence,
        "count": result["copied"],
        "expected_count": entry.expected_count,
        "found": found,
        "skipped_corrupt": len(result["corrupt"]),
        "skipped_files": result["corrupt"],
        "unexpected_size": result["unexpected_size"],
        "archives": sources.archive_records,
        "metadata_files": metadata,
        "bytes_downloaded": sources.bytes_downloaded,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(manifest, indent=2) + "\n"
    return atomic_write(raw_dir / "manifest.json", lambda tmp: tmp.write_text(text), tmp_name="manifest.json.tmp")
