"""dvc.yaml as the single description of the pipeline, read by the Snakefile.

DVC interpolates ``${key}`` from params.yaml; :func:`load_stages` does the same from the
Snakemake config (params.yaml plus ``--config`` overrides), so both engines see the same
commands, dependencies, params and outputs.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")


def lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"dvc.yaml refers to '{dotted}', which params do not define")
        node = node[part]
    return node


def interpolate(text: str, config: dict[str, Any]) -> str:
    return _VAR.sub(lambda m: str(lookup(config, m.group(1))), text)


def _foreach_items(raw: dict, config: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """The items of a ``foreach`` stage as (name suffix, interpolation variables): a list of plain
    values (``${item}``) or a mapping (``${key}``, ``${item}``, ``${item.field}``), as DVC allows."""
    spec = raw["foreach"]
    whole = _VAR.fullmatch(spec.strip()) if isinstance(spec, str) else None
    items = lookup(config, whole.group(1)) if whole else spec
    if isinstance(items, dict):
        return [(str(k), {"key": str(k), "item": v}) for k, v in items.items()]
    if not isinstance(items, list) or not all(isinstance(i, (str, int)) for i in items):
        raise ValueError(f"dvc.yaml stage '{name}': foreach must name a list of plain values or a mapping, "
                         f"got {items!r}")
    return [(str(i), {"item": str(i)}) for i in items]


def _is_state(options: dict) -> bool:
    """A persistent, uncached out (training checkpoints) is state a rerun resumes from, not a product."""
    return bool(options.get("persist")) and options.get("cache") is False


def _paths(entries: list, state: bool | None = None) -> list[str]:
    """dvc.yaml lists entries as plain strings or as one-key mappings with options; with ``state``
    set, keep only the entries that are (or are not) state (:func:`_is_state`)."""
    out = []
    for e in entries or []:
        path, options = (e, {}) if isinstance(e, str) else next(iter(e.items()))
        if state is None or _is_state(options or {}) == state:
            out.append(path)
    return out


def _interpolate_tree(value: Any, config: dict[str, Any]) -> Any:
    """Interpolate strings inside meta; a string that is only ``${key}`` keeps the key's type."""
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, config) for k, v in value.items()}
    if isinstance(value, str):
        whole = _VAR.fullmatch(value.strip())
        return lookup(config, whole.group(1)) if whole else interpolate(value, config)
    return value


_FILE_SUFFIX = re.compile(r"^\.[A-Za-z][A-Za-z0-9]{0,7}$")


def is_directory(path: str) -> bool:
    """Our convention in dvc.yaml: an output without a file suffix is a folder. A run's own folder may
    hold a dot in its name (``data/raw/demo+synth.count=50``, ``runs/demo/gmpi+lr_g=0.0001``: see
    gmnr.experiment), so only a short extension that starts with a letter (``.json``, ``.pt``, ``.mp4``)
    makes a file."""
    return not _FILE_SUFFIX.match(Path(path).suffix)


@dataclass(frozen=True)
class Stage:
    name: str  # DVC's name: "train", or "train@gmnr" for an item of a foreach stage
    cmd: str
    deps: list[str]
    params: list[str]
    outs: list[str]
    metrics: list[str]
    persistent: list[str] = field(default_factory=list)
    threads: int = 1
    conda: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    report: str | None = None  # Snakemake report category for this stage's outputs (meta.snakemake.report)
    # What this run differs in from params.yaml ("" for the stage as dvc.yaml and params.yaml define it):
    # set by gmnr.experiment for Snakemake's --config runs, whose outputs have folders of their own
    variant: str = ""
    upstream_params: tuple[str, ...] = ()  # params the stages before this one read (they place its inputs)
    trains: str | None = None  # the model a train stage trains (meta.snakemake.trains): it tracks that model's params

    @property
    def rule_name(self) -> str:
        """Snakemake's rule name: letters, digits and '_' ("train@gmnr" -> "train_gmnr",
        "ablation-train@no-vdr" -> "ablation_train_no_vdr")."""
        return re.sub(r"[^A-Za-z0-9_]", "_", self.name)

    def param_values(self, config: dict[str, Any]) -> dict[str, Any]:
        """The values of exactly the params this stage reads (Snakemake reruns when they change)."""
        return {key: lookup(config, key) for key in self.params}

    def command(self, overrides: list[str]) -> str:
        """The dvc.yaml command plus ``-S key=value`` for each override (Snakemake's
        ``--config``) that touches a param this stage or a stage before it reads, so the stage
        sees what Snakemake sees and finds its inputs and outputs where Snakemake put them
        (gmnr.experiment). Overrides of later stages' params never enter the command, so they do
        not rerun this stage."""
        scope = (*self.params, *self.upstream_params, "dataset", "paths")
        mine = [o for o in overrides if any(o.split("=", 1)[0] == s or o.startswith(s + ".") for s in scope)]
        return " ".join([self.cmd, *(f"-S {shlex.quote(o)}" for o in mine)])


def _stage(name: str, raw: dict, config: dict[str, Any]) -> Stage:
    meta = _interpolate_tree((raw.get("meta") or {}).get("snakemake", {}), config)
    params = list(dict.fromkeys(interpolate(p, config) for p in _paths(raw.get("params"))))  # once each
    trains = meta.get("trains")
    if trains:  # the sections of the other models, listed for DVC's sake, are not this stage's
        from gmnr.models.registry import params_read_by
        params = params_read_by(str(trains), params)
    return Stage(
        name=name,
        cmd=interpolate(raw["cmd"], config),
        deps=[interpolate(p, config) for p in _paths(raw.get("deps"))],
        params=params,
        # Persistent, uncached outs (checkpoints) are state a rerun resumes from, not products:
        # they are not Snakemake outputs, which Snakemake would delete before a rerun. (Every other
        # out is persistent too, so that DVC never deletes it before gmnr has checked the params.)
        outs=[interpolate(p, config) for p in _paths(raw.get("outs"), state=False)],
        persistent=[interpolate(p, config) for p in _paths(raw.get("outs"), state=True)],
        metrics=[interpolate(p, config) for p in _paths(raw.get("metrics"))],
        threads=int(meta.get("threads", 1)),
        conda=meta.get("conda"),
        resources=dict(meta.get("resources", {})),
        report=meta.get("report"),
        trains=str(trains) if trains else None,
    )


def load_stages(dvc_yaml: Path, config: dict[str, Any]) -> dict[str, Stage]:
    """Every stage of dvc.yaml, with ``foreach`` stages expanded into one stage per item
    (named ``stage@item`` as DVC names them, ``${item}`` interpolated)."""
    spec = yaml.safe_load(Path(dvc_yaml).read_text())
    stages = {}
    for name, raw in spec["stages"].items():
        if "foreach" in raw:
            for suffix, variables in _foreach_items(raw, config, name):
                stages[f"{name}@{suffix}"] = _stage(f"{name}@{suffix}", raw["do"], {**config, **variables})
        else:
            stages[name] = _stage(name, raw, config)
    return stages


def _inside(path: str, folder: str) -> bool:
    return path == folder or Path(path).is_relative_to(folder)


def parents(stages: dict[str, Stage]) -> dict[str, set[str]]:
    """For every stage, the stages whose outputs it reads: a dep that is, or lies inside, one of their
    outputs, or a folder dep holding one of them (compare reads every evaluation's report)."""
    produced = {name: s.outs + s.metrics + s.persistent for name, s in stages.items()}
    found: dict[str, set[str]] = {}
    for name, stage in stages.items():
        found[name] = {other for other, outs in produced.items() if other != name and any(
            _inside(dep, out) or _inside(out, dep) for dep in stage.deps for out in outs)}
    return found


def ancestors(stages: dict[str, Stage]) -> dict[str, set[str]]:
    """For every stage, every stage before it in the pipeline (parents, their parents, ...)."""
    direct = parents(stages)
    found: dict[str, set[str]] = {}

    def visit(name: str, seen: tuple[str, ...]) -> set[str]:
        if name in found:
            return found[name]
        if name in seen:
            raise ValueError(f"dvc.yaml: stages {' -> '.join((*seen, name))} depend on each other in a cycle")
        result: set[str] = set()
        for parent in direct[name]:
            result |= {parent, *visit(parent, (*seen, name))}
        found[name] = result
        return result

    for name in stages:
        visit(name, ())
    return found


def snakemake_inputs(stage: Stage, stages: dict[str, Stage]) -> list[str]:
    """The stage's deps as Snakemake inputs. A dep that is a folder holding other stages' outputs
    (compare reads every evaluation's report from one folder) becomes those outputs: DVC links
    a folder dep to the outputs inside it, Snakemake needs the files that rules produce."""
    produced = [p for s in stages.values() if s is not stage for p in s.outs + s.metrics]
    inputs = []
    for dep in stage.deps:
        inside = [p for p in produced if Path(p).is_relative_to(dep) and p != dep]
        inputs.extend(inside or [dep])
    return inputs


def folder_readers(stage: Stage, stages: dict[str, Stage]) -> bool:
    """Whether ``stage`` reads a folder of other stages' outputs (compare: every evaluation report),
    whose set of files changes with the experiments run, not with the stage's own inputs."""
    produced = [p for s in stages.values() if s is not stage for p in s.outs + s.metrics]
    return any(p != dep and Path(p).is_relative_to(dep) for dep in stage.deps for p in produced)


def _walk(path: Path):
    yield path
    if path.is_dir() and not path.is_symlink():
        for child in path.rglob("*"):
            yield child


def commit_outputs_to_dvc(root: Path, outputs: list[str], targets: list[str] | None = None) -> bool:
    """``dvc commit`` the pipeline's outputs (of the stages ``targets``, default all) without
    disturbing Snakemake.

    DVC re-links committed files from its cache, which gives them new modification times;
    Snakemake would then see the checkpoint newer than the videos rendered from it and redo
    work. So the times are put back afterwards (DVC rehashes those files once, next time).
    """
    import subprocess

    saved = {p: p.stat() for out in outputs for p in _walk(root / out) if p.exists()}
    if targets is not None and not targets:
        return True
    done = subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet", *(targets or [])], cwd=root,
                          capture_output=True, text=True)
    # deepest first, so restoring a file does not bump its folder's time again
    for path in sorted(saved, key=lambda p: len(p.parts), reverse=True):
        if path.exists():
            os.utime(path, ns=(saved[path].st_atime_ns, saved[path].st_mtime_ns), follow_symlinks=False)
    return done.returncode == 0


def stage_sections(name: str, params) -> tuple[str, ...]:
    """The params sections pipeline stage ``name`` reads (a dvc.yaml name: ``pose``, ``train@gmnr``), as
    dvc.yaml lists them, a train stage's filtered through the model registry (:func:`_stage`). dvc.yaml is
    where each stage's params are written, once: the MLflow run of a stage logs these sections, the
    trainer's resume check compares them, DVC and Snakemake rerun the stage when they change."""
    from gmnr.config import PROJECT_ROOT
    from gmnr.models.registry import section_of
    config = {**params.model_dump(mode="json"), "models": [params.model], "ablations": {}}
    stages = load_stages(PROJECT_ROOT / "dvc.yaml", config)
    if name not in stages:
        raise KeyError(f"dvc.yaml has no stage '{name}' (stages: {', '.join(stages)})")
    return tuple(dict.fromkeys(section_of(key) for key in stages[name].params))
