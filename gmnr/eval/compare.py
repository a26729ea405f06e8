"""Cross-model comparison: one table (and two plots) from the evaluation runs in MLflow.

``gmnr compare`` reads the tracking store (the project's default store, or
``MLFLOW_TRACKING_URI``), keeps the latest finished ``evaluate`` run of every
(dataset, model, ablation), and writes ``<paths.results>/table.md``, ``table.csv``,
``fid_vs_fps.png`` and ``metrics.png``. The same files are logged as artifacts of an
MLflow run of the stage ``compare``.

Numbers measured by different back ends (for instance FID over Inception features and FID
over the offline feature extractor) are never put in one column; see :func:`resolve_backends`.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from gmnr.config import Params

# (metric key logged by `gmnr evaluate`, column title, number format, True when higher is better)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("fid", "FID", ".2f", False),
    ("kid", "KID", ".4f", False),
    ("identity_similarity", "identity", ".3f", True),
    ("depth_mse", "depth MSE", ".4g", False),
    ("pose_mse", "pose MSE", ".4g", False),
    ("fps", "FPS", ".3g", True),
)
METRIC_KEYS = tuple(m[0] for m in METRICS)
MODEL_ORDER = ("gmpi", "gmnr", "mvcgan")
UNSPECIFIED = "unspecified"  # an evaluation run that did not tag a metric's back end
EVALUATE_STAGE = "evaluate"
BASELINES = ("init", "pretrained")  # one row each per (dataset, model), whatever run measured them
UNDER_LOAD = "†"  # marks an FPS measured while other work shared the CPU
MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


class CompareError(ValueError):
    """A comparison that cannot be made, phrased as one line (the CLI exits 2 with it)."""


@dataclass
class EvalRow:
    """The latest evaluation of one (dataset, model, ablation)."""
    dataset: str
    model: str
    ablation: str
    run_id: str
    start_time: int  # ms since the epoch, as MLflow stores it
    train_run_id: str = ""
    checkpoint_step: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # finite values only
    backends: dict[str, str] = field(default_factory=dict)  # metric -> back end
    experiment_id: str = ""
    load_avg: float | None = None  # 1-minute load average before the FPS was timed
    cpus: int | None = None

    @property
    def under_load(self) -> bool:
        """Whether the FPS was timed while the load average reached the CPU count (other work ran)."""
        return self.load_avg is not None and self.cpus is not None and self.load_avg >= self.cpus

    @property
    def is_baseline(self) -> bool:
        return self.ablation in BASELINES

    @property
    def key(self) -> tuple[str, str, str]:
        return self.dataset, self.model, self.ablation

    def label(self, with_dataset: bool = False) -> str:
        text = self.model if self.ablation == "default" else f"{self.model} ({self.ablation})"
        return f"{self.dataset}/{text}" if with_dataset else text


@dataclass
class Column:
    """One column of the table: a metric as measured by one back end."""
    metric: str
    title: str
    fmt: str
    higher_is_better: bool
    backend: str | None  # None when no selected run has a value for this metric
    dropped: int = 0  # values left out because another back end measured them

    def value(self, row: EvalRow) -> float | None:
        v = row.metrics.get(self.metric)
        if v is None or self.backend is None or row.backends.get(self.metric, UNSPECIFIED) != self.backend:
            return None
        return v

    @property
    def header(self) -> str:
        """The title, the FID protocol when the back end names one (``FID (torch-fidelity) ↓``), the arrow."""
        from gmnr.eval.metrics.inception import protocol_of
        protocol = protocol_of(self.backend)
        title = f"{self.title} ({protocol})" if protocol else self.title
        return f"{title} {'↑' if self.higher_is_better else '↓'}"


def _experiment_name() -> str:
    from gmnr.tracking import DEFAULT_EXPERIMENT, EXPERIMENT_ENV
    return os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)


def _finite(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def collect_evaluations(tracking_uri: str | None = None, experiment: str | None = None) -> list[EvalRow]:
    """The latest FINISHED ``evaluate`` run of each (dataset, model, ablation), sorted for display.

    "Latest" is the greatest start time (then end time). A missing ``ablation`` tag reads as
    ``default``. Raises :class:`CompareError` when the store holds no such run.
    """
    from mlflow.tracking import MlflowClient

    from gmnr.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    name = experiment or _experiment_name()
    hint = "run `gmnr evaluate` first, or point MLFLOW_TRACKING_URI at the store that holds the evaluations"
    try:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise CompareError(f"no experiment '{name}' in the tracking store {uri}: {hint}")
        runs, token = [], None
        while True:
            page = client.search_runs([found.experiment_id],
                                      filter_string=f"tags.stage = '{EVALUATE_STAGE}' and attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    except CompareError:
        raise
    except Exception as exc:  # an unreachable server, a corrupt database: say which store
        raise CompareError(f"cannot read evaluation runs from {uri} ({type(exc).__name__}: {exc})") from exc

    latest: dict[tuple[str, str, str], EvalRow] = {}
    ends: dict[tuple[str, str, str], int] = {}
    for run in runs:
        tags = run.data.tags
        dataset, variant = tags.get("dataset", "?"), tags.get("data_variant", "default")
        if variant not in ("", "default"):  # trained on other data: its own dataset row group
            dataset = f"{dataset}+{variant}"
        ablation = tags.get("ablation") or "default"
        if ablation.rsplit(",", 1)[-1] in BASELINES:  # a baseline is the model's, not an ablation's
            ablation = ablation.rsplit(",", 1)[-1]
        elif tags.get("ablation_name"):  # a named ablation (params.yaml `ablations`): its name, then its settings
            ablation = f"{tags['ablation_name']}: {ablation}"
        row = EvalRow(dataset=dataset, model=tags.get("model", "?"), ablation=ablation, run_id=run.info.run_id,
                      start_time=run.info.start_time or 0, train_run_id=tags.get("train_run_id", ""),
                      checkpoint_step=tags.get("checkpoint_step", ""), experiment_id=run.info.experiment_id,
                      load_avg=_finite(run.data.metrics.get("speed_load_avg")),
                      cpus=int(c) if (c := _finite(run.data.metrics.get("speed_cpus"))) else None)
        for key in METRIC_KEYS:
            v = _finite(run.data.metrics.get(key))
            if v is not None:
                row.metrics[key] = v
                row.backends[key] = tags.get(f"backend.{key}") or UNSPECIFIED
        end = run.info.end_time or 0
        old = latest.get(row.key)
        if old is None or (row.start_time, end) > (old.start_time, ends[row.key]):
            latest[row.key], ends[row.key] = row, end
    if not latest:
        raise CompareError(f"no finished '{EVALUATE_STAGE}' runs in experiment '{name}' of {uri}: {hint}")

    def order(r: EvalRow):
        model = MODEL_ORDER.index(r.model) if r.model in MODEL_ORDER else len(MODEL_ORDER)
        kind = 0 if r.ablation == "default" else 2 if r.is_baseline else 1  # the run, its ablations, baselines
        return r.dataset, model, r.model, kind, r.ablation
    return sorted(latest.values(), key=order)


def parse_backend_choices(items: Iterable[str] | dict[str, str] | None) -> dict[str, str]:
    """``["fid=clean-fid", ...]`` (the CLI's ``--backend``) -> ``{"fid": "clean-fid"}``."""
    if isinstance(items, dict):
        choices = dict(items)
    else:
        choices = {}
        for item in items or ():
            metric, sep, backend = item.partition("=")
            if not sep or not metric.strip() or not backend.strip():
                raise CompareError(f"--backend expects METRIC=BACKEND, got {item!r}")
            choices[metric.strip()] = backend.strip()
    unknown = sorted(set(choices) - set(METRIC_KEYS))
    if unknown:
        raise CompareError(f"--backend names unknown metric(s) {', '.join(unknown)}; "
                           f"the metrics are {', '.join(METRIC_KEYS)}")
    return choices


def _pick_backend(metric: str, wanted: str, present: list[str]) -> str:
    if wanted in present:
        return wanted
    fits = [b for b in present if wanted.lower() in b.lower()]
    if len(fits) == 1:
        return fits[0]
    have = "; ".join(f"'{b}'" for b in present) or "none (no selected run has this metric)"
    what = "fits several back ends" if fits else f"fits no back end that measured {metric} in the selected runs"
    raise CompareError(f"--backend {metric}={wanted} {what}; back ends present: {have}")


def resolve_backends(rows: list[EvalRow], choices: dict[str, str] | None = None) -> list[Column]:
    """One column per metric, each bound to exactly one back end.

    The rule: a column is one (metric, back end). For each metric, the back ends are read
    from the ``backend.<metric>`` tags of the selected runs that have a finite value for it
    (no tag counts as the back end ``unspecified``).

    - one back end: the column is that back end;
    - no value at all: the column is empty (every cell "–", back end "–");
    - several back ends: :class:`CompareError` naming the metric and the back ends (with the
      rows that use each), unless ``choices`` pins the metric (``{"fid": "inception"}``,
      ``--backend fid=inception`` on the command line). A pin names a back end exactly or by
      a case-insensitive part of its name that fits only one of the back ends present (back
      ends are long descriptions such as "wall clock, batch 1, ... on <CPU>"). A pinned column
      shows only the values of that back end; the other rows show "–" and the footer counts
      what was left out. A pin that fits no back end present, or several, is an error too.

    Rows are chosen first (the latest run of each key) and back ends second: pinning never
    reaches back to an older run that happens to use the pinned back end.
    """
    choices = parse_backend_choices(choices)
    with_dataset = len({r.dataset for r in rows}) > 1
    columns = []
    for key, title, fmt, higher in METRICS:
        used: dict[str, list[str]] = {}
        for r in rows:
            if key in r.metrics:
                used.setdefault(r.backends[key], []).append(r.label(with_dataset=True) if with_dataset else r.label())
        backend = None
        if key in choices:
            backend = _pick_backend(key, choices[key], sorted(used))
        elif len(used) > 1:
            detail = "; ".join(f"'{b}' ({', '.join(labels)})" for b, labels in sorted(used.items()))
            raise CompareError(f"metric '{key}' was measured by different back ends: {detail}. "
                               f"Numbers from different back ends are not comparable and never share a "
                               f"column: pass --backend {key}=<back end> to choose one")
        elif used:
            backend = next(iter(used))
        dropped = sum(len(labels) for b, labels in used.items() if b != backend)
        columns.append(Column(key, title, fmt, higher, backend, dropped))
    return columns


def _cell(value: float | None, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt.endswith("g") and abs(value) >= 1000:  # no 1.23e+03 for a large FPS
        return format(value, ".0f")
    return format(value, fmt)


def ui_base(tracking_uri: str = "") -> str:
    """Where a person opens the runs: the tracking server itself, or `mlflow ui` for a local store."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else MLFLOW_UI


def run_url(row: EvalRow, tracking_uri: str = "") -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{row.experiment_id}/runs/{row.run_id}"


def _fps_cell(row: EvalRow, column: Column) -> str:
    text = _cell(column.value(row), column.fmt)
    return f"{text} {UNDER_LOAD}" if column.metric == "fps" and text != "–" and row.under_load else text


def render_markdown(rows: list[EvalRow], columns: list[Column], tracking_uri: str = "") -> str:
    head = ["dataset", "model", "ablation", *(c.header for c in columns), "run"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join([":--"] * 3 + ["--:"] * len(columns) + [":--"]) + "|"]
    for r in rows:
        cells = [r.dataset, r.model, r.ablation, *(_fps_cell(r, c) for c in columns),
                 f"[{r.run_id[:8]}]({run_url(r, tracking_uri)})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Back ends (every number in a column comes from the one back end named here):", ""]
    for c in columns:
        note = f" ({c.dropped} value(s) from other back ends left out)" if c.dropped else ""
        lines.append(f"- {c.title}: `{c.backend or '–'}`{note}")
    loaded = [r for r in rows if r.under_load and "fps" in r.metrics]
    if loaded:
        worst = max(loaded, key=lambda r: r.load_avg / r.cpus)
        lines += ["", f"{UNDER_LOAD} FPS timed while the machine's 1-minute load average was at or above its CPU "
                      f"count (up to {worst.load_avg:.1f} on {worst.cpus} CPUs): other work shared the CPU, so "
                      f"these rows are slower than the model is."]
    where = f" in `{tracking_uri}`" if tracking_uri else ""
    lines += ["", f"Each row is the latest finished `evaluate` run of its (dataset, model, ablation){where}; "
                  "`init` and `pretrained` are each model's baselines (the untrained generator, the weights "
                  "training started from), once per dataset and model. An ablation lists every setting that "
                  "differs from params.yaml; a dataset `demo+<settings>` was trained on data made under other "
                  "params. ↓ lower is better, ↑ higher is better, – not measured. `run` opens the MLflow run "
                  f"(`mlflow ui` at {ui_base(tracking_uri)}); table.csv has the full ids.", ""]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[EvalRow], columns: list[Column], tracking_uri: str = "") -> None:
    fields = ["dataset", "model", "ablation"]
    for c in columns:
        fields += [c.metric, f"{c.metric}_backend"]
    fields += ["fps_under_load", "load_avg", "run_id", "run_url", "train_run_id", "checkpoint_step", "start_time_ms"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            line = {"dataset": r.dataset, "model": r.model, "ablation": r.ablation, "run_id": r.run_id,
                    "run_url": run_url(r, tracking_uri), "train_run_id": r.train_run_id,
                    "checkpoint_step": r.checkpoint_step, "start_time_ms": r.start_time,
                    "fps_under_load": str(r.under_load).lower(), "load_avg": "" if r.load_avg is None else r.load_avg}
            for c in columns:
                v = c.value(r)
                line[c.metric] = "" if v is None else repr(v)
                line[f"{c.metric}_backend"] = c.backend if v is not None else ""
            writer.writerow(line)


def _wrapped(backend: str | None, width: int = 48) -> str:
    import textwrap
    return textwrap.fill(f"[{backend or '–'}]", width)


def _model_colors(rows: list[EvalRow]) -> dict[str, tuple]:
    import matplotlib
    palette = matplotlib.colormaps["tab10"]
    models = sorted({r.model for r in rows}, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else 9, m))
    return {m: palette(i % 10) for i, m in enumerate(models)}


def _wrap_label(text: str, width: int = 44) -> str:
    """A legend entry on lines of at most ``width`` characters, broken after commas (the settings of
    an ablation), a setting longer than a line cut into pieces: nothing is left out, and removing
    the line breaks gives the text back."""
    lines, line = [], ""
    for piece in re.split(r"(?<=,)", text):
        while len(piece) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return "\n".join(lines + [line] if line else lines)


MARKERS = {"default": "o", "init": "X", "pretrained": "v"}
ABLATION_MARKERS = ("^", "s", "D", "P", "*", "h", "<", ">", "p", "d")


def _markers(rows: list[EvalRow]) -> dict[str, str]:
    """One marker per ablation (the default run a disc, the baselines a cross and a triangle)."""
    others = sorted({r.ablation for r in rows} - set(MARKERS))
    return {**MARKERS, **{a: ABLATION_MARKERS[i % len(ABLATION_MARKERS)] for i, a in enumerate(others)}}


def plot_fid_vs_fps(path: Path, rows: list[EvalRow], columns: list[Column]) -> dict:
    """FID against rendering speed: one point per row, colour = model, marker = ablation, named in a
    legend beside the axes (no labels on the points, so none overprint); a hollow point is an FPS
    timed under load. Returns what it drew: the legend's labels and every text's box in pixels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {c.metric: c for c in columns}
    fid, fps = by["fid"], by["fps"]
    with_dataset = len({r.dataset for r in rows}) > 1
    colors, markers = _model_colors(rows), _markers(rows)
    fig, ax = plt.subplots(figsize=(8.4, 4.8), dpi=120)
    points = [(fps.value(r), fid.value(r), r) for r in rows]
    points = [(x, y, r) for x, y, r in points if x is not None and y is not None and x > 0]
    for x, y, r in points:
        label = _wrap_label(r.label(with_dataset) + (f" ({UNDER_LOAD} under load)" if r.under_load else ""))
        ax.scatter([x], [y], s=60, zorder=3, marker=markers[r.ablation], label=label, edgecolors=colors[r.model],
                   facecolors="none" if r.under_load else colors[r.model], linewidths=1.5)
    if points:
        ax.set_xscale("log")
        xs = [p[0] for p in points]
        ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
                  title="model (ablation)", title_fontsize=8, borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no evaluation has both FID and FPS", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"FPS (log scale)\n{_wrapped(fps.backend, 80)}", fontsize=8)
    ax.set_ylabel(f"FID, lower is better\n{_wrapped(fid.backend, 60)}", fontsize=8)
    ax.set_title("Quality against rendering speed")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), tuple(t.get_window_extent(renderer).bounds)) for t in texts]
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()] if legend else []
    plt.close(fig)
    return {"legend": labels, "text_boxes": boxes}


def plot_metrics(path: Path, rows: list[EvalRow], columns: list[Column]) -> None:
    """Small multiples: one bar chart per metric, one bar per row, coloured by model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_dataset = len({r.dataset for r in rows}) > 1
    colors = _model_colors(rows)
    ncols = 3
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.9 * nrows), dpi=110, squeeze=False)
    labels = [r.label(with_dataset) for r in rows]
    for ax, c in zip(axes.flat, columns):
        values = [c.value(r) for r in rows]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(rows)), heights, color=[colors[r.model] for r in rows])
        for bar, v in zip(bars, values):
            if v is None:
                ax.annotate("–", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom", fontsize=9)
        ax.set_title(f"{c.header}\n{_wrapped(c.backend)}", fontsize=8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def compare(output: Path, backends: Iterable[str] | dict[str, str] | None = None,
            tracking_uri: str | None = None, experiment: str | None = None) -> dict:
    """Collect, check back ends, and write table.md, table.csv, fid_vs_fps.png, metrics.png.

    No tracking of its own (see :func:`run_compare`). Returns a report: rows, the back end of
    each column, and the files written.
    """
    from gmnr.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    rows = collect_evaluations(uri, experiment)
    columns = resolve_backends(rows, parse_backend_choices(backends))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = {"table_md": output / "table.md", "table_csv": output / "table.csv",
             "fid_vs_fps": output / "fid_vs_fps.png", "metrics": output / "metrics.png"}
    files["table_md"].write_text(render_markdown(rows, columns, uri))
    write_csv(files["table_csv"], rows, columns, uri)
    plot_fid_vs_fps(files["fid_vs_fps"], rows, columns)
    plot_metrics(files["metrics"], rows, columns)
    return {"rows": len(rows), "output": str(output),
            "backends": {c.metric: c.backend for c in columns},
            "runs": [{"dataset": r.dataset, "model": r.model, "ablation": r.ablation, "run_id": r.run_id}
                     for r in rows],
            "files": {k: str(v) for k, v in files.items()}}


def run_compare(params: Params, output: Path, backends: Iterable[str] | dict[str, str] | None = None) -> dict:
    """The ``compare`` stage: :func:`compare`, then the outputs as artifacts of a ``compare`` run."""
    from gmnr.tracking import stage_run

    report = compare(output, backends)
    datasets = sorted({r["dataset"] for r in report["runs"]})
    models = sorted({r["model"] for r in report["runs"]})
    tags = {"dataset": ",".join(datasets), "model": ",".join(models),
            **{f"backend.{k}": v for k, v in report["backends"].items() if v}}
    with stage_run("compare", params, tags) as run:
        run.log_params({"backend_choices": ",".join(f"{k}={v}" for k, v in parse_backend_choices(backends).items())
                        or "none"})
        run.log_metrics({"rows": report["rows"]})
        for path in report["files"].values():
            run.log_artifact(path, "results")
        run.log_dict({"runs": report["runs"], "backends": report["backends"]}, "results/compare.json")
    report["run_id"] = run.run_id
    return report
