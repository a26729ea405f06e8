"""Stage outputs: built in a staging folder, swapped in whole, and never at the cost of a user's file.

A stage ``S`` writes named *entries* (files or folders, e.g. ``landmarks.csv`` and ``detections/``)
into an output folder ``OUT``. Other stages may share ``OUT`` (landmarks and pose both write into
``data/interim/<dataset>``), and a user may point ``--output`` at a folder that holds their own
files, so a stage owns exactly its entries and nothing else:

* ``OUT/.gmnr-S.json`` (the *record*) lists what ``S`` last wrote: its entries and every file in
  them. A stage replaces or removes a path only when the record (or, for outputs written before
  records existed, the stage's own index file; see ``legacy``) says it wrote that path. Anything
  else in the way (``userout/detections/important.txt``, a user's ``my_photos/images/``) stops
  the stage before it does any work, with a message naming the file.
* Entries must not be, contain, or lie inside any of the stage's inputs (``gmnr pack`` with its
  output in its raw folder would otherwise read and overwrite its own input).
* New entries are built in ``OUT/.gmnr-S.staging/new/``. When they are complete, a journal
  (``commit.json``, written atomically) marks the swap as decided; then every old entry is moved
  into ``.gmnr-S.staging/old/``, every new one renamed into place (same folder: atomic renames),
  the record written, and the staging folder removed. A stage killed before the journal exists
  leaves its previous outputs untouched (the next run discards the staging folder); killed after,
  the next run finishes the swap first. Either way nothing half-written is ever presented as
  complete, and no temporary file outlives the next run.
* The staging folder is locked (``flock``) while a stage runs, so a second run of the same stage
  on the same folder refuses at once instead of corrupting the first one's work.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from gmnr.io import atomic_write

RECORD_VERSION = 1
# What a workflow engine leaves in a folder it lists as an output: Snakemake dates a folder output by
# its `.snakemake_timestamp`. Replaced with the folder, never a reason to refuse it.
ENGINE_FILES = frozenset({".snakemake_timestamp"})


class OutputConflict(ValueError):
    """An output path is unsafe to write: it holds files the stage did not write, or overlaps an input."""


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _files_under(path: Path) -> list[str]:
    """Every non-directory path below ``path`` (symlinks included, never followed), relative, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):  # followlinks=False: a linked folder is listed, not entered
        rel = Path(dirpath).relative_to(path)
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                out.append((rel / d).as_posix())
                dirnames.remove(d)
        out.extend((rel / f).as_posix() for f in filenames)
    return sorted(out)


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _atomic_json(data: dict, path: Path) -> None:
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text), durable=True)  # the swap's record must survive a crash


def _remove(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif _exists(path):
        os.unlink(path)


class StagedOutput:
    """``with StagedOutput(out, "landmarks", ["landmarks.csv", "detections"], inputs=[raw]) as s:``
    write into ``s.path("landmarks.csv")`` etc.; on a clean exit the entries are swapped in.

    All checks (overlap with inputs, ownership of every path the swap would replace or remove,
    another run in progress) happen in ``__enter__``, before the stage does any work. On an
    exception (or Ctrl-C) the staging folder is removed and ``OUT`` is left as it was.

    ``legacy(out)`` may return the relative paths that the stage's own index file proves it wrote
    (e.g. the images ``dataset.json`` lists) for an output made before records existed; it is
    consulted only when there is no record.
    """

    def __init__(self, out: Path, stage: str, entries: Iterable[str], inputs: Iterable[Path] = (),
                 legacy: Callable[[Path], set[str] | None] | None = None):
        self.out = Path(out)
        self.stage = stage
        self.entries = list(dict.fromkeys(entries))
        for e in self.entries:
            if "/" in e or e.startswith(".") or e in ("", ".."):
                raise ValueError(f"entry {e!r} of stage {stage} must be a plain, visible name in {out}")
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.legacy = legacy
        self.staging = self.out / f".gmnr-{stage}.staging"
        self.record_path = self.out / f".gmnr-{stage}.json"
        self._lock_fd: int | None = None

    # -- paths ------------------------------------------------------------------------------
    def path(self, entry: str) -> Path:
        """Where the stage writes ``entry`` while it runs."""
        if entry not in self.entries:
            raise KeyError(f"stage {self.stage} did not declare output {entry!r} (declared: {self.entries})")
        return self.staging / "new" / entry

    @property
    def work_dir(self) -> Path:
        """Scratch space that is discarded with the staging folder (never swapped in)."""
        path = self.staging / "work"
        path.mkdir(exist_ok=True)
        return path

    # -- checks -----------------------------------------------------------------------------
    def check_overlap(self) -> None:
        """Refuse entries (or the staging folder) that are, contain or lie inside an input, and an
        output folder that contains an input folder. (A file input may share the output folder: pose
        reads landmarks.csv beside the poses.csv it writes.)"""
        targets = [self.out / e for e in self.entries] + [self.staging]
        for source in self.inputs:
            src = _resolved(source)
            if os.path.isdir(src) and src.is_relative_to(_resolved(self.out)):
                how = "is" if src == _resolved(self.out) else "contains"
                raise OutputConflict(f"output folder {self.out} {how} input {source}: choose an --output "
                                     f"outside the input and not containing it")
            for target in targets:
                if _overlap(_resolved(target), src):
                    raise OutputConflict(
                        f"output {target} overlaps input {source} (the stage would read what it writes, or "
                        f"overwrite its input): choose an --output outside the input and not containing it")

    def read_record(self) -> dict | None:
        if not self.record_path.is_file():
            return None
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("stage") != self.stage or not isinstance(record.get("files"), list):
            return None
        return record

    def owned_files(self) -> tuple[set[str], bool]:
        """Relative paths below ``out`` the stage wrote, and whether a record vouches for them."""
        record = self.read_record()
        if record is not None:
            return set(record["files"]), True
        if self.legacy is not None:
            try:
                claimed = self.legacy(self.out)
            except Exception:  # a damaged index proves nothing
                claimed = None
            if claimed:
                return set(claimed), False
        return set(), False

    def check_ownership(self) -> None:
        """Every path the swap would replace or remove must be one the stage wrote."""
        owned, _ = self.owned_files()
        for entry in self.entries:
            target = self.out / entry
            if not _exists(target):
                continue
            if os.path.isdir(target) and not os.path.islink(target):
                # A folder's own files decide (empty sub-folders hold nothing to lose).
                foreign = [f for f in _files_under(target) if f"{entry}/{f}" not in owned and f not in ENGINE_FILES]
                if foreign:
                    more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
                    raise OutputConflict(
                        f"{target / foreign[0]}{more} {'is' if len(foreign) == 1 else 'are'} not an output of "
                        f"gmnr {self.stage} (no record of it in {self.record_path.name}); refusing to replace "
                        f"{target}: move your files elsewhere or choose another --output")
            elif entry not in owned:
                raise OutputConflict(
                    f"{target} exists and is not an output of gmnr {self.stage} (no record of it in "
                    f"{self.record_path.name}); refusing to overwrite it: move it or choose another --output")

    # -- lifecycle --------------------------------------------------------------------------
    def _lock_staging(self) -> None:
        self._lock_fd = _exclusive(os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY), self.stage, self.out,
                                   self.staging)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> str | None:
        """Finish or discard what a killed run left behind. Returns what was done, or None."""
        if not os.path.isdir(self.staging):
            return None
        self._lock_staging()
        try:
            journal = self.staging / "commit.json"
            if journal.is_file():
                self._swap(json.loads(journal.read_text()))
                done = f"finished the swap of an interrupted gmnr {self.stage} in {self.out}"
            else:
                done = f"discarded the unfinished output of an interrupted gmnr {self.stage} in {self.out}"
        finally:
            self._unlock()
        shutil.rmtree(self.staging)
        return done

    def preflight(self) -> str | None:
        """The checks of ``__enter__`` without starting: call it before a stage does any work
        (overlap, an interrupted earlier run, ownership). Returns what recovery did, or None."""
        self.check_overlap()
        recovered = self.recover() if self.out.is_dir() else None
        self.check_ownership()
        return recovered

    def __enter__(self) -> "StagedOutput":
        self.check_overlap()
        self.out.mkdir(parents=True, exist_ok=True)
        self.recovered = self.recover()
        self.check_ownership()
        (self.staging / "new").mkdir(parents=True)
        self._lock_staging()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        except BaseException:
            exc_type = True
            raise
        finally:
            self._unlock()
            if exc_type is not None and (self.staging / "commit.json").is_file():
                pass  # the swap was decided but failed half-way: the next run finishes it (recover)
            elif _exists(self.staging):
                shutil.rmtree(self.staging, ignore_errors=True)

    # -- the swap ---------------------------------------------------------------------------
    def commit(self) -> None:
        self.check_ownership()  # again: a user may have added files to an entry while the stage ran
        new = self.staging / "new"
        present = [e for e in self.entries if _exists(new / e)]
        owned, _ = self.owned_files()
        # Entries this run did not produce but an earlier one did (e.g. detections/ after
        # landmarks.export_txt was switched off) are retired with the swap: they are ours and stale.
        retired = [e for e in self.entries if e not in present and _exists(self.out / e)
                   and (e in owned or any(f.startswith(f"{e}/") for f in owned))]
        files = []
        kinds = {}
        for e in present:
            if os.path.isdir(new / e) and not os.path.islink(new / e):
                kinds[e] = "dir"
                files += [f"{e}/{f}" for f in _files_under(new / e)]
            else:
                kinds[e] = "file"
                files.append(e)
        plan = {"version": RECORD_VERSION, "stage": self.stage, "present": present, "retired": retired,
                "record": {"version": RECORD_VERSION, "stage": self.stage, "entries": kinds, "files": sorted(files)}}
        _atomic_json(plan, self.staging / "commit.json")  # from here on, the swap is decided
        self._swap(plan)

    def _swap(self, plan: dict) -> None:
        """Idempotent: after a kill at any point, running it again completes the same swap."""
        new, old = self.staging / "new", self.staging / "old"
        old.mkdir(exist_ok=True)
        for e in plan["present"] + plan["retired"]:
            target = self.out / e
            if e in plan["present"] and not _exists(new / e):
                continue  # already swapped in
            if _exists(target) and not _exists(old / e):
                os.replace(target, old / e)
            if e in plan["present"]:
                os.replace(new / e, target)
        _atomic_json(plan["record"], self.record_path)
        shutil.rmtree(old, ignore_errors=True)


def _exclusive(fd: int, stage: str, out: Path, locked: Path) -> int:
    """``flock`` ``fd`` (an open file or folder) exclusively without waiting; another holder of the
    lock means another run writes ``out`` right now: :class:`OutputConflict` naming it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            holder = ""
            try:
                pid = Path(locked).read_text().strip() if Path(locked).is_file() else ""
                holder = f" by process {pid}" if pid.isdigit() else ""
            except OSError:
                pass
            raise OutputConflict(f"another gmnr {stage} is writing {out} right now ({locked} is locked{holder}); "
                                 f"wait for it to finish, or choose another --output") from None
        raise
    return fd


@contextlib.contextmanager
def output_lock(out: Path, stage: str) -> Iterator[Path]:
    """Hold ``<out>/.gmnr-<stage>.lock`` exclusively while ``stage`` writes the folder ``out`` in place
    (a training run adds checkpoints to its folder as it goes, so it is locked rather than staged): a
    second writer is refused at once, before it reads, moves or prunes anything. The lock is the
    same ``flock`` that guards a staging folder; the file holds the writer's pid for the message and
    stays (it is not an output)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f".gmnr-{stage}.lock"
    fd = _exclusive(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), stage, out, path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)


def check_outputs_clear_of_inputs(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """For stages without a staging folder (train, render, evaluate): refuse outputs that are,
    contain or lie inside an input, before any work."""
    for target in outputs:
        if target is None:
            continue
        for source in inputs:
            if source is not None and _overlap(_resolved(Path(target)), _resolved(Path(source))):
                raise OutputConflict(f"output {target} overlaps input {source}: choose an --output outside "
                                     f"the input and not containing it")
