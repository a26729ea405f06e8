"""Atomic writes: a killed stage leaves either the old file or the new one, never half of one.

:func:`atomic_write` is the one way the project writes a file atomically; the others here (and
the PNG, checkpoint, manifest and feature-cache writers elsewhere) are thin uses of it. pandas is
imported only by the table helpers, so light modules (images, download, staging) can use it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import pandas as pd


def atomic_write(path: Path, write_fn: Callable[[Path], object], *, tmp_name: str | None = None,
                 durable: bool = False) -> Path:
    """Have ``write_fn(tmp)`` write a temporary sibling of ``path``, then rename it onto ``path``.

    The rename is atomic on one file system, so readers see the old file or the whole new one.
    ``tmp_name`` defaults to ``.<name>.tmp`` (hidden, so image listings skip it); callers whose
    temporaries are recognised by name elsewhere (stale checkpoint clean-up, per-process names
    for files several processes may write) pass theirs. ``durable`` fsyncs the data before the
    rename, for files a resume or a swap relies on after a power cut. The parent folder is
    created. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name if tmp_name is not None else f".{path.name}.tmp")
    write_fn(tmp)
    if durable:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # fsync flushes the file's data whichever descriptor asks
        finally:
            os.close(fd)
    os.replace(tmp, path)
    return path


def link_or_copy(src: Path, dest: Path) -> None:
    """Hardlink ``src`` at ``dest`` when possible (FFHQ is 89 GB; a second copy is wasteful), else
    copy it (another file system, or links not allowed: a copy costs only space)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def write_json(data: dict, path: Path) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=float) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(table: pd.DataFrame, path: Path, float_format: str | None = "%.6g") -> Path:
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format=float_format))


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """Read a stage's table, failing with a message that names the file and the stage behind it."""
    import pandas as pd
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} not found; run the stage that writes it first")
    return pd.read_csv(path, keep_default_na=True)
