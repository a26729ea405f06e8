"""Atomic writes: a killed stage leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def write_json(data: dict, path: Path) -> Path:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")
    tmp.replace(path)
    return path


def write_csv(table: pd.DataFrame, path: Path, float_format: str | None = "%.6g") -> Path:
    tmp = _tmp(path)
    table.to_csv(tmp, index=False, float_format=float_format)
    tmp.replace(path)
    return path


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """Read a stage's table, failing with a message that names the file and the stage behind it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} not found; run the stage that writes it first")
    return pd.read_csv(path, keep_default_na=True)
