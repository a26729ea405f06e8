"""Checkpoints: tensors and plain data only, written atomically, loaded with weights_only=True.

A checkpoint holds the networks, their EMA, the optimiser states, the RNG states, the step and
the resolved config. No pickled code ever: `torch.load(..., weights_only=True)` refuses
anything but tensors and plain containers, so a checkpoint from elsewhere cannot run code; its
refusal is one line naming the global the file asked for.

Resuming takes the newest checkpoint that is whole (:func:`newest_valid`): a zero-byte, truncated,
tampered or non-finite one, one missing a key or not fitting the model, is moved aside into
``checkpoints/skipped-<UTC time>/`` (kept, never deleted) with one line saying which and why, and
the one before it is used. Temporary files of writers that were killed are removed
(:func:`clean_orphans`). Weights that are not finite are never written (:func:`save_checkpoint`),
and a non-finite loss stops training naming the step and the loss (:func:`check_finite`).
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gmnr.io import atomic_write

if TYPE_CHECKING:
    from gmnr.config import Params

PATTERN = re.compile(r"^step-(\d{9})\.pt$")
# Temporary names gmnr.io.atomic_write gives: save_checkpoint's (with the writer's pid), and the
# default ``.<name>.tmp`` of the trainer's final.pt, train.json and sample grids.
_TMP_WITH_PID = re.compile(r"^\.step-\d{9}\.pt\.tmp-(\d+)$")
_TMP_FIXED = re.compile(r"^\.(final\.pt|train\.json|[^/]+\.png)\.tmp$")


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf: the run stops, keeping the last checkpoint written before it."""


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


def _first_non_finite(tensors: Mapping[str, Any]) -> str | None:
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def save_checkpoint(folder: Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write ``step-<step>.pt`` through a temporary file and ``os.replace``; keep the last K.
    Refuses (NonFiniteError) to write networks holding NaN or inf: the previous checkpoint stays
    the newest, so a resume starts from weights that are still good."""
    folder = Path(folder)
    for net in ("G", "G_ema", "D"):
        bad = _first_non_finite(payload.get(net) or {})
        if bad is not None:
            raise NonFiniteError(f"step {step}: {net}.{bad} holds NaN or inf; not writing a checkpoint "
                                 f"(the last good one, {latest_checkpoint(folder) or 'none'}, is kept)")
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)

    def write(tmp: Path) -> None:
        # a file object: torch names the archive inside after a path, and tmp's holds the pid
        with open(tmp, "wb") as f:
            torch.save({**payload, "step": step}, f)

    # the pid in the temporary's name: _TMP_WITH_PID finds the ones a killed process left
    atomic_write(final, write, tmp_name=f".{final.name}.tmp-{os.getpid()}", durable=True)
    for _, old in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return final


# torch's refusals name the global in several phrasings ("Unsupported global: GLOBAL os.system was
# not an allowed global...", "Trying to load unsupported GLOBAL posix.system whose module posix is
# blocked", ...) and one names a pickle operand instead.
_REFUSED_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL ([\w.]+)|Unsupported operand (\S+)", re.IGNORECASE)


def why_unloadable(path: Path, exc: BaseException) -> str:
    """One line for a checkpoint ``torch.load(weights_only=True)`` refused or could not read.

    torch's own message is many lines and starts with its advice to re-run with
    ``weights_only=False`` (which would execute the file's code); what matters is the global the
    file asked for, so that is what the line names, and the advice is never repeated."""
    text = str(exc)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return f"{path}: empty file (0 bytes; a write that was interrupted)"
    m = _REFUSED_GLOBAL.search(text)
    if m:
        what = next(g for g in m.groups() if g)
        kind = "operand" if m.group(2) else "global"
        return (f"{path}: refused: the file asks for the {kind} '{what}', which is not plain tensor data "
                f"(weights-only load; nothing from the file was run)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    first = lines[0][:300] if lines else "no detail"
    return f"{path}: not a loadable gmnr checkpoint ({type(exc).__name__}: {first})"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise RuntimeError(why_unloadable(Path(path), exc)) from None
    if not isinstance(state, dict):
        raise RuntimeError(f"{path}: not a gmnr checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def load_with_params(path: Path, map_location: str | torch.device = "cpu", needs: tuple[str, ...] = ("config",),
                     kind: str = "checkpoint") -> tuple[Params, dict[str, Any]]:
    """(the params a checkpoint or ``final.pt`` was trained with, its state): the one way to read
    both, so every caller gets the same refusals. ``needs``: the entries the caller uses, named
    with ``kind`` in the error when missing; the params are validated naming the file."""
    from gmnr.config import validate
    state = load_checkpoint(Path(path), map_location)
    if any(key not in state for key in needs):
        raise ValueError(f"{path}: not a gmnr {kind} (needs {' and '.join(map(repr, needs))})")
    return validate(state["config"], source=f"{path} config"), state


# -- resuming ------------------------------------------------------------------------------------
_REQUIRED = {"G": Mapping, "D": Mapping, "G_ema": Mapping, "opt_G": Mapping, "opt_D": Mapping, "rng": Mapping,
             "step": int, "config": Mapping, "model": str}


def _network_problem(name: str, saved: Mapping, module: torch.nn.Module) -> str | None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        return (f"{name} does not fit the model these params build ({len(missing)} tensors missing, e.g. "
                f"{missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})")
    for k, t in expected.items():
        if not isinstance(saved[k], torch.Tensor) or tuple(saved[k].shape) != tuple(t.shape):
            got = tuple(saved[k].shape) if isinstance(saved[k], torch.Tensor) else type(saved[k]).__name__
            return f"{name}.{k} is {got} in the file, {tuple(t.shape)} in the model"
    bad = _first_non_finite(saved)
    return f"{name}.{bad} holds NaN or inf" if bad is not None else None


def _optimizer_problem(name: str, saved: Mapping, optimizer: torch.optim.Optimizer) -> str | None:
    groups = saved.get("param_groups")
    if not isinstance(saved.get("state"), Mapping) or not isinstance(groups, list):
        return f"{name} is not an optimiser state (needs 'state' and 'param_groups')"
    ours = optimizer.state_dict()["param_groups"]
    if [len(g.get("params", [])) for g in groups] != [len(g["params"]) for g in ours]:
        return f"{name} holds state for other parameters than this model's"
    return None


def checkpoint_problem(path: Path, state: dict, networks: Mapping[str, torch.nn.Module],
                       optimizers: Mapping[str, torch.optim.Optimizer]) -> str | None:
    """Why ``state`` (loaded from ``path``) cannot be resumed, or None when it can."""
    for key, kind in _REQUIRED.items():
        if key not in state:
            return f"the key '{key}' is missing"
        if not isinstance(state[key], kind) or (kind is int and isinstance(state[key], bool)):
            return f"'{key}' is a {type(state[key]).__name__}, expected {kind.__name__}"
    m = PATTERN.match(Path(path).name)
    if m and int(m.group(1)) != state["step"]:
        return f"it says step {state['step']} but is named for step {int(m.group(1))}"
    if not isinstance(state["rng"].get("torch"), torch.Tensor) or state["rng"]["torch"].dtype != torch.uint8:
        return "its RNG state is not a torch byte tensor"
    for name, module in networks.items():
        problem = _network_problem(name, state[name], module)
        if problem:
            return problem
    for name, optimizer in optimizers.items():
        problem = _optimizer_problem(name, state[name], optimizer)
        if problem:
            return problem
    return None


def newest_valid(folder: Path, map_location, networks: Mapping[str, torch.nn.Module],
                 optimizers: Mapping[str, torch.optim.Optimizer], move_invalid: bool = True,
                 log=None, model: str | None = None) -> tuple[Path | None, dict | None]:
    """The newest checkpoint of ``folder`` that loads and fits ``networks`` and ``optimizers``.

    Each newer one that does not is reported (one line: which, and why) and, with
    ``move_invalid`` (the main process), moved into ``folder/skipped-<UTC time>/``: kept for
    inspection, and out of the way of resuming and of ``keep_last`` pruning. A whole checkpoint
    of another ``model`` is not damage but a wrong folder: that raises, touching nothing."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    skipped_dir = None
    for _, path in reversed(list_checkpoints(folder)):
        try:
            state = load_checkpoint(path, map_location)
            if model is not None and isinstance(state.get("model"), str) and state["model"] != model:
                raise ValueError(f"{path} holds a '{state['model']}' model, params say '{model}' (another run's "
                                 f"folder? choose another --output)")
            problem = checkpoint_problem(path, state, networks, optimizers)
        except FileNotFoundError:  # moved or pruned by another process meanwhile
            continue
        except RuntimeError as exc:
            state, problem = None, str(exc).removeprefix(f"{path}: ")
        if problem is None:
            return path, state
        where = ""
        if move_invalid:
            if skipped_dir is None:
                skipped_dir = Path(folder) / f"skipped-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
                skipped_dir.mkdir(exist_ok=True)
            os.replace(path, skipped_dir / path.name)
            where = f"; moved to {skipped_dir}"
        log(f"gmnr train: skipping checkpoint {path}: {problem}{where}")
    return None, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def clean_orphans(run_dir: Path) -> list[Path]:
    """Remove the temporary files that killed writers left in a run folder (``checkpoints/``,
    ``samples/`` and the folder itself). Only names this project's writers use are touched, and a
    checkpoint temporary of a process that is still running is left alone. Returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "samples"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            m = _TMP_WITH_PID.match(path.name)
            if (m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))) \
                    or (not m and _TMP_FIXED.match(path.name)):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path)
    return removed


def check_finite(stats: Mapping[str, float], step: int, run_dir: Path | None = None) -> None:
    """Stop training (NonFiniteError) when a loss, R1 penalty or gradient norm of ``step`` is NaN
    or inf, naming them; nothing of that step is saved, so the last checkpoint stays good."""
    bad = {k: v for k, v in stats.items() if k.startswith(("loss", "grad_norm", "r1"))
           and isinstance(v, (int, float)) and not math.isfinite(v)}
    if bad:
        last = latest_checkpoint(Path(run_dir) / "checkpoints") if run_dir is not None else None
        named = ", ".join(f"{k} = {v}" for k, v in sorted(bad.items()))
        raise NonFiniteError(f"step {step}: {named}; training stopped before saving anything of this step "
                             f"(last good checkpoint: {last or 'none'}); a learning rate or R1 gamma may be "
                             f"too high for this data")
