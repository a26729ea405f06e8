"""Every experiment has its own outputs: folders named by what makes a run different from params.yaml.

The *reference* is params.yaml as it stands (its values, the demo section applied, for the dataset the
run selects); a run that differs from it in params its stages read never writes the reference run's
folders. The names, for a run that differs (nothing is appended for the reference run, so its folders
are the ones dvc.yaml names):

- data stages (source, landmarks, pose, pack): ``<paths.X>/<dataset>+<slug>``, the slug listing the
  params of the stage and of the stages before it that differ (``demo+synth.count=50``);
- train: ``<paths.runs>/<data>/<model>+<slug>`` where ``<data>`` is the packed set's folder name and
  the slug lists the differing params train reads itself (``runs/demo/gmnr+vdr=false``); a named
  ablation (``ablations.<name>`` in params.yaml) is ``<model>+<name>``;
- render: ``<run folder>/render+<slug>``; evaluate: ``<paths.reports>/<data>/evaluate/<run>+<slug>.json``.

A slug is ``key=value`` pairs joined by commas (a key of the model's own section without its prefix:
``vdr=false,train.steps=400``); one that would not make a short, plain folder name is a hash
(``h-1a2b3c4d5e``). Params that change how a stage runs but not what it computes (threads, devices,
GPUs, logging and checkpoint intervals) never name a folder. Which params each stage reads, and which
stages come before it, is read from dvc.yaml (:mod:`gmnr.pipeline_spec`), the one description of the
pipeline: the CLI's default paths, Snakemake's rules and ``gmnr compare`` agree with DVC by construction.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmnr.config import PROJECT_ROOT, Params, flatten, parse_override, read_params_file, resolve

DVC_YAML = PROJECT_ROOT / "dvc.yaml"
DATA_STAGES = ("source", "landmarks", "align", "pose", "pack")
MODEL_STAGES = ("train", "render", "evaluate")
# Never part of a name: they select what runs (dataset, model) and where (paths), or are folded into
# the resolved values (demo, ablations).
# custom_name is the dataset's own name (the folder itself, :meth:`Layout.dataset_name`), not a variant of it.
NOT_NAMING = ("dataset", "custom_name", "model", "models", "paths", "demo", "ablations")
# How a stage runs, not what it computes.
EXECUTION_KEYS = frozenset({
    "train.gpus", "train.device", "train.threads", "train.amp", "train.checkpoint_every", "train.keep_last",
    "train.sample_every", "train.log_every", "train.grid_latents", "train.grid_views",
    "evaluate.threads", "evaluate.device", "evaluate.batch_size", "evaluate.cache_real_features",
    "evaluate.cache_generated_features", "synth.threads", "landmarks.batch_size", "download.from_dir",
    "download.retries", "download.timeout_s", "download.max_extract_bytes", "download.max_extract_ratio",
    "pose.deep3dfacerecon_root"})
_PLAIN = re.compile(r"^[A-Za-z0-9._=,-]{1,64}$")


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def describe(differences: dict[str, Any], model: str | None = None) -> str:
    """``key=value`` pairs, comma-joined, in key order; the model's own section without its prefix."""
    def short(key: str) -> str:
        return key.split(".", 1)[1] if model and key.startswith(f"{model}.") else key
    return ",".join(f"{short(k)}={_format(v)}" for k, v in sorted(differences.items()))


def slug(differences: dict[str, Any], model: str | None = None) -> str:
    """A folder-name part for ``differences``: :func:`describe`'s text when it is short and plain,
    else ``h-`` and 10 hex digits of a hash of the differences."""
    if not differences:
        return ""
    text = describe(differences, model)
    if _PLAIN.match(text) and ".." not in text:
        return text
    digest = hashlib.sha256(json.dumps(differences, sort_keys=True, default=str).encode()).hexdigest()
    return f"h-{digest[:10]}"


def _reads(entry: str, key: str) -> bool:
    return key == entry or key.startswith(entry + ".")


def differences(params: Params, reference: Params, keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The leaves under ``keys`` (dvc.yaml params entries: sections or dotted keys) whose resolved
    values differ between ``params`` and ``reference``, less :data:`EXECUTION_KEYS` and
    :data:`NOT_NAMING`."""
    keys = [k for k in keys if k.split(".")[0] not in NOT_NAMING]
    ours, theirs = flatten(params.model_dump(mode="json")), flatten(reference.model_dump(mode="json"))
    found = {}
    for leaf in sorted(ours.keys() | theirs.keys()):
        if leaf in EXECUTION_KEYS or leaf.split(".")[0] in NOT_NAMING or not any(_reads(k, leaf) for k in keys):
            continue
        if ours.get(leaf, "<absent>") != theirs.get(leaf, "<absent>"):
            found[leaf] = ours.get(leaf)
    return found


SELECTING = ("dataset", "model", "models", "paths")  # overrides that choose what runs and where, not how


def reference_for(data: dict[str, Any], overrides: list[str], source: str = "params",
                  ablation: str | None = None) -> Params:
    """What the run is compared with: the params file's own values (with the named ``ablation``) for
    the dataset, models and paths the overrides select (a dataset switch is another dataset, not a
    variant of this one)."""
    selecting = [o for o in overrides if parse_override(o)[0][0] in SELECTING]
    return resolve(data, selecting, source, ablation)


@dataclass(frozen=True)
class StageKeys:
    """Which params a stage reads itself and which the stages before it read (from dvc.yaml)."""
    own: tuple[str, ...]
    upstream: tuple[str, ...]
    data: tuple[str, ...]  # what the data stages up to this one (itself included) read


def _read_keys(params: list[str]) -> list[str]:
    return [p for p in params if p.split(".")[0] not in ("demo", "ablations")]


def stage_keys(model: str, dvc_yaml: Path = DVC_YAML, config: dict[str, Any] | None = None) -> dict[str, StageKeys]:
    """:class:`StageKeys` of the data stages and of ``<stage>@<model>`` for the model stages."""
    from gmnr.pipeline_spec import ancestors, load_stages
    if config is None:
        config = resolve(read_params_file(dvc_yaml.parent / "params.yaml")[0]).model_dump(mode="json")
    stages = load_stages(dvc_yaml, {**config, "models": [model], "ablations": {}})
    before = ancestors(stages)
    result = {}
    for name, stage in stages.items():
        up = sorted({k for a in before[name] for k in _read_keys(stages[a].params)})
        own = tuple(k for k in _read_keys(stage.params) if not any(_reads(u, k) for u in up))
        data_names = [n for n in (name, *before[name]) if n.split("@")[0] in DATA_STAGES]
        data = tuple(sorted({k for n in data_names for k in _read_keys(stages[n].params)}))
        result[name.split("@")[0] if name.split("@")[0] in DATA_STAGES + MODEL_STAGES else name] = \
            StageKeys(own, tuple(up), data)
    return result


def _join(base: str, *parts: str) -> str:
    return "+".join([base, *(p for p in parts if p)])


@dataclass
class Layout:
    """The folders and files of one run (one model, its data chain) under ``params``. ``reference`` is
    params.yaml's run (the table's ablation key and the MLflow labels list what differs from it);
    ``ablation`` the named ablation the params came from, if any, and ``base`` params.yaml's run with
    that ablation applied (folders are named by what differs from it: a named ablation's own settings
    are in its name, ``gmnr+no-vdr``, not repeated as a slug). The methods give the default paths of
    the CLI; :meth:`path_pairs` maps dvc.yaml's paths to these for Snakemake."""
    params: Params
    reference: Params
    ablation: str | None = None
    keys: dict[str, StageKeys] = field(default_factory=dict)
    base: Params | None = None  # None: ``reference`` (no named ablation)

    @classmethod
    def of(cls, params: Params, reference: Params, ablation: str | None = None,
           dvc_yaml: Path = DVC_YAML, base: Params | None = None) -> "Layout":
        keys = stage_keys(params.model, dvc_yaml, reference.model_dump(mode="json")) if dvc_yaml.is_file() else {}
        return cls(params, reference, ablation, keys, base)

    # -- what differs ---------------------------------------------------------------------------
    def _diff(self, keys: tuple[str, ...]) -> dict[str, Any]:
        return differences(self.params, self.reference, keys)

    def _name_diff(self, stage: str) -> dict[str, Any]:
        """What ``stage``'s own params differ in from the run its folders are named after (``base``)."""
        if stage not in self.keys:
            return {}
        return differences(self.params, self.base or self.reference, self.keys[stage].own)

    def data_differences(self, stage: str = "pack") -> dict[str, Any]:
        return self._diff(self.keys[stage].data) if stage in self.keys else {}

    def own_differences(self, stage: str) -> dict[str, Any]:
        return self._diff(self.keys[stage].own) if stage in self.keys else {}

    def model_differences(self) -> dict[str, Any]:
        """What the model's evaluation differs in beyond its data: train's own params and evaluate's."""
        return {**self.own_differences("train"), **self.own_differences("evaluate")}

    def ablation_text(self) -> str:
        """Every setting of the evaluation that differs beyond the data (``vdr=false,train.steps=400``),
        or ``default``: the table's ablation key."""
        return describe(self.model_differences(), self.params.model) or "default"

    def data_text(self) -> str:
        return describe(self.data_differences(), None) or "default"

    def labels(self, stage: str) -> dict[str, str]:
        """MLflow tags of ``stage``'s run: ``data_variant`` (what differs in its data), and for a model
        stage ``ablation`` (what differs in the params it and the stages of its model before it read),
        ``run`` (the run folder's name) and ``ablation_name`` (a named ablation)."""
        if stage in DATA_STAGES:
            return {"data_variant": describe(self.data_differences(stage)) or "default"}
        diffs = dict(self.own_differences("train"))
        if stage in ("render", "evaluate"):
            diffs.update(self.own_differences(stage))
        labels = {"data_variant": self.data_text(), "ablation": describe(diffs, self.params.model) or "default",
                  "run": self.run_name()}
        if self.ablation:
            labels["ablation_name"] = self.ablation
        return labels

    # -- names ----------------------------------------------------------------------------------
    def dataset_name(self, stage: str = "pack") -> str:
        return _join(self._base_name(), slug(self.data_differences(stage)))

    def _base_name(self) -> str:
        """The dataset's folder name before any variant slug: the dataset; for a custom dataset whose
        name (custom_name, or download.from_dir's folder) differs from params.yaml's own, that name, so
        two folders of photos never share folders. params.yaml's own custom dataset keeps the folders
        dvc.yaml names (``custom``): DVC interpolates dvc.yaml from params.yaml's values alone."""
        if self.params.dataset == "custom" and (self.reference.dataset != "custom"
                                                or self.params.dataset_name() != self.reference.dataset_name()):
            return self.params.dataset_name()
        return self.params.dataset

    def run_name(self) -> str:
        """``gmnr``, ``gmnr+vdr=false``, ``gmnr+<ablation name>``: the run folder's name."""
        return _join(self.params.model, self.ablation or "", slug(self._name_diff("train"), self.params.model))

    def evaluation_name(self) -> str:
        return _join(self.run_name(), slug(self._name_diff("evaluate"), self.params.model))

    # -- paths (the CLI's defaults) ---------------------------------------------------------------
    def raw_dir(self) -> Path:
        return Path(self.params.paths.raw) / self.dataset_name("source")

    def interim_dir(self, stage: str) -> Path:
        return Path(self.params.paths.interim) / self.dataset_name(stage)

    def aligned_dir(self) -> Path:
        """The align stage's folder (images/, landmarks.csv): what pose and pack read. Not inside the
        interim folder: pose writes there, and an output folder holding a stage's input is refused."""
        return Path(self.params.paths.aligned) / self.dataset_name("align")

    def processed_dir(self) -> Path:
        return Path(self.params.paths.processed) / self.dataset_name("pack")

    def reports_dir(self, stage: str) -> Path:
        return Path(self.params.paths.reports) / self.dataset_name(stage if stage in DATA_STAGES else "pack")

    def run_dir(self) -> Path:
        return Path(self.params.paths.runs) / self.dataset_name("pack") / self.run_name()

    def render_dir(self) -> Path:
        return self.run_dir() / _join("render", slug(self._name_diff("render"), self.params.model))

    def evaluation_report(self) -> Path:
        return self.reports_dir("evaluate") / "evaluate" / f"{self.evaluation_name()}.json"

    def outputs(self, stage: str) -> list[Path]:
        """The folders or files below which ``stage`` writes (the roots of its dvc.yaml outs)."""
        return {"source": lambda: [self.raw_dir(), self.reports_dir("source")],
                "landmarks": lambda: [self.interim_dir("landmarks"), self.reports_dir("landmarks")],
                "align": lambda: [self.aligned_dir(), self.reports_dir("align")],
                "pose": lambda: [self.interim_dir("pose"), self.reports_dir("pose")],
                "pack": lambda: [self.processed_dir(), self.reports_dir("pack")],
                "train": lambda: [self.run_dir()],
                "render": lambda: [self.render_dir()],
                "evaluate": lambda: [self.evaluation_report()]}[stage]()

    def path_pairs(self, stage: str, default: "Layout") -> list[tuple[str, str]]:
        """(dvc.yaml's path, this run's path) for the roots of ``stage``'s outputs."""
        return [(str(a), str(b)) for a, b in zip(default.outputs(stage), self.outputs(stage))]


def layout_for(params: Params, data: dict[str, Any], overrides: list[str], source: str = "params",
               ablation: str | None = None) -> Layout:
    """The :class:`Layout` of a CLI run: ``params`` resolved from the file ``data`` with ``overrides``
    (and the named ``ablation``)."""
    base = reference_for(data, overrides, source, ablation) if ablation else None
    return Layout.of(params, reference_for(data, overrides, source), ablation, base=base)


def map_path(path: str, pairs: list[tuple[str, str]]) -> str:
    """``path`` with the first matching root of ``pairs`` replaced (unchanged when none matches)."""
    for old, new in pairs:
        if path == old:
            return new
        if Path(path).is_relative_to(old):
            return str(Path(new) / Path(path).relative_to(old))
    return path


def _kind(stage_name: str) -> tuple[str, str | None, str | None]:
    """(stage kind, model item, ablation name) of a dvc.yaml stage name: ``train@gmnr`` ->
    ("train", "gmnr", None); ``ablation-evaluate@no-vdr`` -> ("evaluate", None, "no-vdr")."""
    base, _, item = stage_name.partition("@")
    if base.startswith("ablation-"):
        return base.removeprefix("ablation-"), None, item
    return base, item or None, None


def plan_stages(dvc_yaml: Path, data: dict[str, Any], overrides: list[str], source: str = "params") -> dict:
    """dvc.yaml's stages as Snakemake runs them under ``overrides`` (``--config``): a stage whose run
    differs from params.yaml's (:class:`Layout`) writes to its own paths, reads its inputs from
    where the stages before it wrote them, and carries ``variant`` (what differs), so the Snakefile
    never records it in dvc.lock. Without overrides these are exactly dvc.yaml's stages."""
    import dataclasses

    from gmnr.pipeline_spec import ancestors, load_stages, snakemake_inputs
    params = resolve(data, overrides, source)
    reference = reference_for(data, overrides, source)
    config = {**reference.model_dump(mode="json"), "models": params.models, "ablations": params.ablations}
    stages = load_stages(dvc_yaml, config)
    before = ancestors(stages)
    layouts: dict[tuple[str | None, str | None], tuple[Layout, Layout]] = {}

    def layouts_of(model: str | None, ablation: str | None) -> tuple[Layout, Layout]:
        if (model, ablation) not in layouts:
            ours = resolve(data, overrides, source, ablation) if ablation else params
            base = reference_for(data, overrides, source, ablation) if ablation else reference
            ref = reference
            if model:
                ours, base, ref = (p.model_copy(update={"model": model}) for p in (ours, base, ref))
            keys = stage_keys(ours.model, dvc_yaml, ref.model_dump(mode="json"))
            # (this run, the run dvc.yaml's paths name: params.yaml's, or the named ablation as written)
            layouts[(model, ablation)] = (Layout(ours, ref, ablation, keys, base),
                                          Layout(base, ref, ablation, keys, base))
        return layouts[(model, ablation)]

    pairs: dict[str, list[tuple[str, str]]] = {}
    for name in stages:
        kind, model, ablation = _kind(name)
        if kind in DATA_STAGES + MODEL_STAGES:
            ours, default = layouts_of(model or (params.ablations[ablation]["model"] if ablation else None), ablation)
            pairs[name] = [(a, b) for a, b in ours.path_pairs(kind, default) if a != b]
        else:
            pairs[name] = []
    planned = {}
    for name, stage in stages.items():
        kind = _kind(name)[0]
        # The params of the stages before it place a stage's inputs and outputs (gmnr finds them from the
        # overrides it is given); compare reads the tracking store, not their files.
        upstream = tuple(sorted({k for a in before[name] for k in stages[a].params})) \
            if kind in DATA_STAGES + MODEL_STAGES else ()
        stage = dataclasses.replace(stage, upstream_params=upstream)
        inputs = []
        for dep in snakemake_inputs(stage, stages):  # folder deps holding outputs become those outputs
            producer = next((o for o in stages if o != name and any(
                dep == out or Path(dep).is_relative_to(out) for out in stages[o].outs + stages[o].metrics
                + stages[o].persistent)), None)
            inputs.append(map_path(dep, pairs[producer]) if producer else dep)
        cmd = stage.cmd
        for old, new in pairs[name]:
            cmd = cmd.replace(old, new)
        scope = (*stage.params, *upstream)
        touched = [o for o in overrides if parse_override(o)[0][0] not in SELECTING
                   and any(o.split("=", 1)[0] == k or o.startswith(k + ".") for k in scope)]
        variant = ", ".join(f"{a} -> {b}" for a, b in pairs[name]) or ", ".join(touched)
        planned[name] = dataclasses.replace(
            stage, cmd=cmd, deps=inputs, variant=variant,
            outs=[map_path(p, pairs[name]) for p in stage.outs],
            metrics=[map_path(p, pairs[name]) for p in stage.metrics],
            persistent=[map_path(p, pairs[name]) for p in stage.persistent])
    return planned
