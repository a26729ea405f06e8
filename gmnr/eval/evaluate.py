"""`gmnr evaluate`: every metric of GMPI's protocol for one checkpoint, or for one of its baselines
(the architecture untrained, ``--init``; the weights a pretrained run started from,
``--pretrained``), written to one JSON report and logged as one MLflow run of the stage ``evaluate``.

Reads: the checkpoint (default ``<runs>/<dataset>/<model>/final.pt``) and the packed training set
(default ``<processed>/<dataset>``). Writes: the report (``gmnr evaluate --output``, by default
``<reports>/<dataset>/evaluate/<run>.json``, what dvc.yaml's evaluate stage passes;
``<run>-<baseline>.json`` for a baseline) and a cache of the training set's Inception features
under ``<runs>/<dataset>/.cache/`` (keyed by the extractor file and the images' bytes).

The report::

    {"metrics": {"fid", "kid", "identity_similarity", "depth_mse", "pose_mse", "fps",
                 "n_generated", "face_detection_rate", ...counts and timings},
     "backends": {"fid": ..., "kid": ..., ...}, "tags": {MLflow tags}, "checkpoint": ..., "evaluate": {...}}
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from gmnr.config import Params
from gmnr.io import write_json

# metric key -> the metric object (by name) whose back end measured it
METRIC_BACKENDS = {"fid": "fid", "kid": "fid", "identity_similarity": "identity", "depth_mse": "depth",
                   "pose_mse": "pose", "fps": "speed"}


def run_labels(trained: Params, reference: Params | None = None, ablation_name: str | None = None) -> dict[str, str]:
    """How an evaluation is labelled in MLflow and the table: ``ablation``, every setting of the trained
    run (its checkpoint's config) and of the evaluation that differs from ``reference`` (params.yaml
    as it stands: "vdr=false,train.steps=400", or "default"); ``data_variant``, what differs in the
    data it was trained on; ``run``, the run folder's name (gmnr.experiment)."""
    from gmnr.experiment import Layout
    if reference is None:
        from gmnr.config import load_params
        reference = load_params()
    reference = reference.model_copy(update={"model": trained.model})
    try:  # null architecture keys are the pretrained file's, as the trainer recorded them
        from gmnr.models.factory import resolve_architecture
        reference = resolve_architecture(reference)
    except Exception:  # no file to read them from: compare what params say
        pass
    base = None
    if ablation_name and ablation_name in reference.ablations:  # its folders are named after the ablation as written
        from gmnr.config import ablation_overrides, apply_overrides, validate
        base = validate(apply_overrides(reference.model_dump(mode="json"),
                                        ablation_overrides(reference, ablation_name)), "params.yaml ablation")
    layout = Layout.of(trained, reference, ablation_name, base=base)
    return {"ablation": layout.ablation_text(), "data_variant": layout.data_text(), "run": layout.run_name()}


def _n_planes(params: Params) -> int | None:
    from gmnr.models.registry import get
    return get(params.model).planes(params)


BASELINES = ("init", "pretrained")  # the untrained architecture; the weights a pretrained run started from


def _load(params: Params, checkpoint: Path, baseline: str | None, device):
    """(G, the params it was built with, checkpoint state, a description of the weights).

    ``baseline`` None: the checkpoint's EMA generator. ``"init"``: its architecture at the
    trainer's seeded initialisation, untrained. ``"pretrained"``: the weights the run started
    from, that initialisation with ``gmpi.pretrained`` loaded on top (as Trainer.init_pretrained)."""
    import torch

    from gmnr.models.factory import build_generator, load_generator, set_inference_vdr
    if baseline not in (None, *BASELINES):
        raise ValueError(f"baseline must be one of {BASELINES} or None, got {baseline!r}")
    if baseline is None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: no checkpoint (train first, or pass --checkpoint / --init)")
        G, trained, state = load_generator(checkpoint, device, params.evaluate.vdr)
        return G, trained, state, f"{checkpoint} (step {state.get('step')})"
    trained, state = params, {}
    if Path(checkpoint).is_file():  # the architecture the checkpoint was trained with
        from gmnr.train.checkpoint import load_with_params
        trained, state = load_with_params(checkpoint)
        state = {"mlflow_run_id": state.get("mlflow_run_id", ""), "step": 0}
    torch.manual_seed(trained.seed)  # as the trainer does right before building G
    G = build_generator(trained)
    weights = f"untrained (seed {trained.seed})"
    if baseline == "pretrained":
        if not has_pretrained_start(trained):
            raise ValueError(f"{checkpoint}: this {trained.model} run did not start from pretrained weights "
                             f"(gmpi.pretrained is null): there is no 'pretrained' baseline")
        from gmnr.data.download import resolve_weights
        from gmnr.models.pretrained import init_from_pretrained
        from gmnr.models.registry import get
        source = get(trained.model).pretrained(trained)
        init_from_pretrained(G, None, resolve_weights(source, Path(trained.paths.downloads) / "weights"))
        weights = f"{weights} + pretrained {source}"
    G = set_inference_vdr(G.to(device), params.evaluate.vdr)
    return G.eval().requires_grad_(False), trained, state, weights


def baselines_of(checkpoint: Path) -> list[str]:
    """The baselines a checkpoint's evaluation reports beside it: always the untrained ``init``,
    and ``pretrained`` when its run started from pretrained weights."""
    from gmnr.train.checkpoint import load_with_params
    trained, _ = load_with_params(checkpoint)
    return ["init", "pretrained"] if has_pretrained_start(trained) else ["init"]


def has_pretrained_start(params: Params) -> bool:
    """Whether a training run with these params starts from pretrained weights (its spec's: GMPI's
    family from ``gmpi.pretrained``; MVCGAN never does)."""
    from gmnr.models.registry import get
    return bool(get(params.model).pretrained(params))


def evaluate(params: Params, checkpoint: Path, real_dir: Path, output: Path,
             baseline: str | None = None, progress: bool = True, reference: Params | None = None,
             ablation_name: str | None = None) -> dict:
    """Every metric for the checkpoint (``baseline`` None) or one of its :data:`BASELINES`.
    ``output``: the report's path (the CLI's default: ``<reports>/<dataset>/evaluate/<run>.json``).
    ``reference``: the params the run is labelled against (default: the project's params.yaml);
    ``ablation_name``: the named ablation it belongs to (:func:`run_labels`)."""
    import torch

    from gmnr.eval.metrics import EvalContext
    from gmnr.eval.metrics.depth import DepthConsistency
    from gmnr.eval.metrics.fid import FIDKID
    from gmnr.eval.metrics.identity import IdentityConsistency
    from gmnr.eval.metrics.inception import load_extractor
    from gmnr.eval.metrics.pose_accuracy import GeometryRenders, PoseAccuracy
    from gmnr.eval.metrics.speed import Speed
    from gmnr.tracking import stage_run

    e = params.evaluate
    torch.set_num_threads(e.threads)
    if e.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("evaluate.device is 'cuda' but no CUDA device is available")
    device = torch.device("cuda" if e.device != "cpu" and torch.cuda.is_available() else "cpu")
    G, trained, state, weights = _load(params, checkpoint, baseline, device)
    trained = trained.model_copy(update={"evaluate": e})  # evaluation settings: today's params
    cam = trained.model_camera()  # the generator's own camera (MVCGAN's differs from the dataset's)
    ctx = EvalContext(resolution=trained.training_resolution(), fov_deg=cam.fov_deg, radius=cam.radius,
                      center=tuple(cam.center), yaw_std=cam.yaw_std, pitch_std=cam.pitch_std,
                      truncation=cam.truncation, n_planes=_n_planes(trained), device=device, seed=params.seed,
                      batch_size=e.batch_size)
    labels = run_labels(trained, reference, ablation_name)
    ablation = labels["ablation"]
    if baseline:
        ablation = baseline if ablation == "default" else f"{ablation},{baseline}"
    geometry = GeometryRenders(e.geometry_images, e.detect_size, e.min_face_confidence)
    cache = Path(params.paths.runs) / trained.dataset_name() / ".cache" if e.cache_real_features else None
    metrics_objects = [
        Speed(e.speed_frames, e.speed_warmup),
        FIDKID(real_dir, e.fid_images, e.fid_real_max, e.kid_subsets, e.kid_subset_size, cache,
               extractor=load_extractor(e.inception, device, e.fid_protocol),
               generated_cache_dir=cache / "generated" if cache and e.cache_generated_features else None),
        IdentityConsistency(e.identity_pairs, e.identity_backend, e.detect_size, e.min_face_confidence),
        PoseAccuracy(geometry),
        DepthConsistency(geometry),
    ]
    from gmnr.models.registry import get
    if not get(trained.model).has_viewpoint:  # a 2D generator has no viewpoint and no depth: FID, KID and speed only
        metrics_objects = metrics_objects[:2]
    step = int(state.get("step", 0)) if not baseline else 0
    # a custom dataset's own name (gmnr.config Params.dataset_name): its rows never merge with another folder's
    tags = {"train_run_id": state.get("mlflow_run_id") or "", "dataset": trained.dataset_name(),
            "model": trained.model,
            "ablation": ablation, "data_variant": labels["data_variant"], "run": labels["run"],
            "checkpoint_step": str(step), "checkpoint": baseline or str(checkpoint), "weights": weights[:250]}
    if ablation_name:
        tags["ablation_name"] = ablation_name
    values: dict = {}
    backends: dict[str, str] = {}
    seconds: dict[str, float] = {}
    with stage_run("evaluate", trained, tags) as run:
        if run.active:
            measured = ("the weights training started from" if baseline == "pretrained" else
                        "the untrained generator" if baseline else f"`{checkpoint}` (step {step})")
            trained_by = (f"[the training run]({run.run_link(tags['train_run_id'])})" if tags["train_run_id"]
                          else "a training run with no MLflow run")
            run.set_description(f"Evaluation of {measured} of {trained.model} on {trained.dataset_name()}, trained by "
                                f"{trained_by}. Ablation: `{ablation}` (settings that differ from params.yaml); "
                                f"run folder `{labels['run']}`. Metrics follow GMPI's protocol; each metric's "
                                f"back end is in its `backend.<metric>` tag.")
        for metric in metrics_objects:
            start = time.perf_counter()
            result = metric.compute(G, ctx)
            seconds[metric.name] = time.perf_counter() - start
            backend = result.pop("backend")
            for key, owner in METRIC_BACKENDS.items():
                if owner == metric.name:
                    backends[key] = backend
            values.update(result)
            if progress:
                shown = {k: v for k, v in result.items() if k in METRIC_BACKENDS}
                print(f"evaluate {metric.name}: {shown} ({seconds[metric.name]:.1f} s)", flush=True)
        tags.update({f"backend.{k}": v[:250] for k, v in backends.items()})
        run.set_tags({k: v for k, v in tags.items() if k.startswith("backend.")})
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        run.log_metrics({**numeric, **{f"seconds_{k}": v for k, v in seconds.items()}})
        report = {"stage": "evaluate", "metrics": values, "backends": backends, "tags": tags,
                  "checkpoint": tags["checkpoint"], "seconds": seconds, "evaluate": e.model_dump(mode="json"),
                  "mlflow_run_id": run.run_id or ""}
        write_json(_json_safe(report), output)
        run.log_artifact(output)
    return {"stage": "evaluate", "output": str(output), **{k: values.get(k) for k in METRIC_BACKENDS},
            "n_generated": values.get("n_generated"), "face_detection_rate": values.get("face_detection_rate")}


def _json_safe(data):
    """NaN/inf -> null (JSON has no NaN; a reader sees "not measured")."""
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data
