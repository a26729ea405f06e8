"""Checkpoints: tensors and plain data only, written atomically, loaded with weights_only=True.

A checkpoint holds the networks, their EMA, the optimiser states, the RNG states, the step and
the resolved config. No pickled code ever: `torch.load(..., weights_only=True)` refuses
anything but tensors and plain containers, so a checkpoint from elsewhere cannot run code.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

PATTERN = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:09d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def move_aside(folder: Path) -> Path:
    """Move every checkpoint of ``folder`` into ``folder/stale-<UTC time>/`` (kept, never deleted;
    the subfolder is invisible to :func:`list_checkpoints`). Returns that subfolder."""
    import time
    stale = Path(folder) / f"stale-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    stale.mkdir(parents=True, exist_ok=True)
    for _, path in list_checkpoints(folder):
        os.replace(path, stale / path.name)
    return stale


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(folder: Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write ``step-<step>.pt`` through a temporary file and ``os.replace``; keep the last K."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({**payload, "step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for _, old in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path}: not a loadable gmnr checkpoint ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:300]})") from None
