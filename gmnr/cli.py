"""``gmnr`` command line: one subcommand per pipeline stage.

Every path option defaults to where params.yaml puts it for the selected dataset, so
``gmnr landmarks`` inside the pipeline and ``gmnr landmarks --input my_faces/ --output out/`` by
hand run the same code. Params are validated before anything is read or written.

Each subcommand is a parser and a handler ``_run_<command>(args, context)`` registered on it with
``set_defaults(func=...)``; ``gmnr COMMAND --help`` says what the command does and shows an example.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gmnr.config import Params, ParamsError, read_params_file, resolve, write_schema
from gmnr.staging import check_outputs_clear_of_inputs

if TYPE_CHECKING:
    from gmnr.experiment import Layout

_DESCRIPTION = """\
gmnr: a reproducible 3D-aware face-generation pipeline (GMPI, GMNR, MVCGAN), one subcommand per stage.

The pipeline (dvc exp run, or snakemake) runs these commands in order; each also runs by hand, with
its inputs and outputs defaulting to where the pipeline keeps them for params.yaml's dataset and model.
`gmnr COMMAND --help` describes a command and its options."""

_EXAMPLES = """\
examples:
  gmnr params -S model=gmnr                     # validate params.yaml with an override, print it resolved
  gmnr synth -S synth.count=50 --output /tmp/demo/raw   # render 50 demo heads into a folder of your own
  gmnr train -S model=gmnr -S train.steps=400   # train GMNR on the packed demo set, by hand"""


@dataclass
class _Context:
    """What a handler gets besides its own options: the validated params and, for a pipeline stage,
    the run's layout (every default path) and its report folder. ``gmnr params`` has neither."""
    params: Params
    progress: bool
    layout: Layout | None = None
    reports: Path | None = None


Handler = Callable[[argparse.Namespace, _Context], "dict | None"]


def _add_command(sub, name: str, run: Handler, summary: str, description: str, example: str,
                 parents: list[argparse.ArgumentParser], stage: str | None) -> argparse.ArgumentParser:
    """One subcommand: ``summary`` is its line in ``gmnr --help``, ``description`` and ``example`` its
    own ``--help``; ``stage`` the pipeline stage it runs (its reports, tracking labels and dvc.lock
    entry), None for a command that is no stage."""
    p = sub.add_parser(name, parents=parents, help=summary, description=description,
                       epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run, stage=stage)
    return p


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    common.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, as in `dvc exp run -S` (repeatable), e.g. -S synth.count=50")
    common.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    common.add_argument("--reports", type=Path, help="stage report folder (default: <paths.reports>/<dataset>)")

    parser = argparse.ArgumentParser(prog="gmnr", description=_DESCRIPTION, epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add_command(
        sub, "params", _run_params, "validate params and print them resolved",
        "Validate the params file (with any -S overrides) against the schema and print every value resolved,\n"
        "as the stages would see it. Nothing else is read or written, unless --write-schema.",
        "gmnr params -S dataset=ffhq256 -S model=gmnr", [common], stage=None)
    p.add_argument("--write-schema", action="store_true", help="regenerate workflow/schemas/params.schema.json")

    p = _add_command(
        sub, "source", _run_source, "the pipeline's first stage: `synth` for dataset=demo, else `download`",
        "The pipeline's first stage: for dataset=demo it renders the procedural heads (as `gmnr synth`),\n"
        "for a registry dataset it downloads (or takes --from) the archives and extracts the images (as\n"
        "`gmnr download`), and with -S dataset=custom it takes any folder or archive of your photos.",
        "gmnr source -S dataset=custom --from ~/my_photos/", [common], stage="source")
    p.add_argument("--output", type=Path, help="raw dataset folder (default: <paths.raw>/<dataset>)")
    p.add_argument("--downloads", type=Path, help="archive cache (default: <paths.downloads>)")
    p.add_argument("--from", dest="from_dir",
                   help="use archives/images you already have in this folder (or this archive); with "
                        "-S dataset=custom, any folder or archive of photos")

    p = _add_command(
        sub, "synth", _run_synth, "render the procedural demo dataset",
        "Render the offline demo dataset: procedural 3D heads at known camera poses (synth.count images\n"
        "of synth.resolution px), with depth maps and ground_truth.csv (pose and 2D landmarks per image).\n"
        "Image i depends only on (seed, i), so a larger count keeps the earlier images.",
        "gmnr synth -S synth.count=50 --output /tmp/demo/raw", [common], stage="source")
    p.add_argument("--output", type=Path, help="default: <paths.raw>/demo")

    p = _add_command(
        sub, "download", _run_download, "download (or take --from) a registry dataset",
        "Download a registry dataset's archives into the resumable cache (or take them --from a folder you\n"
        "have), check their sizes and hashes, and extract the images into the raw dataset folder.",
        "gmnr download -S dataset=ffhq256 --from ~/archives/", [common], stage="source")
    p.add_argument("--output", type=Path, help="default: <paths.raw>/<dataset>")
    p.add_argument("--downloads", type=Path, help="archive cache (default: <paths.downloads>)")
    p.add_argument("--from", dest="from_dir", help="use archives/images you already have in this folder")

    p = _add_command(
        sub, "landmarks", _run_landmarks, "MTCNN boxes + 5 landmarks for every image",
        "Detect the face in every raw image (MTCNN) and write its box, confidence and five landmarks\n"
        "(eyes, nose tip, mouth corners) to landmarks.csv, with a status per image and a contact sheet.",
        "gmnr landmarks --input my_faces/ --output /tmp/landmarks", [common], stage="landmarks")
    p.add_argument("--input", type=Path, help="raw dataset folder (default: <paths.raw>/<dataset>)")
    p.add_argument("--output", type=Path, help="default: <paths.interim>/<dataset>")

    p = _add_command(
        sub, "align", _run_align,
        "FFHQ's crop of every face from its 5 landmarks (align.mode ffhq), or pass through (off)",
        "Crop and rotate every face as FFHQ was made (align.mode ffhq: NVlabs' recreate_aligned_images\n"
        "from the 5 landmarks), or pass the images through (off; auto picks off for the registry's\n"
        "datasets and the demo, which are aligned already). Carries the landmarks into the crops.",
        "gmnr align -S dataset=custom -S align.mode=ffhq", [common], stage="align")
    p.add_argument("--input", type=Path, help="raw dataset folder (default: <paths.raw>/<dataset>)")
    p.add_argument("--landmarks", type=Path, help="default: <paths.interim>/<dataset>/landmarks.csv")
    p.add_argument("--output", type=Path, help="default: <paths.aligned>/<dataset>")

    p = _add_command(
        sub, "pose", _run_pose, "head pose per image (builtin PnP or Deep3DFaceRecon)",
        "Estimate the camera of every aligned image (yaw, pitch, the look-at camera GMPI trains with) from\n"
        "its landmarks: pose.backend builtin fits a mean face by PnP, deep3dfacerecon runs GMPI's fork.\n"
        "Fits worse than pose.max_reprojection_iod are rejected. Writes poses.csv.",
        "gmnr pose -S pose.backend=builtin --output /tmp/pose", [common], stage="pose")
    p.add_argument("--input", type=Path, help="aligned images (default: <paths.aligned>/<dataset>)")
    p.add_argument("--landmarks", type=Path, help="default: <input>/landmarks.csv (the align stage's folder holds "
                                                  "both)")
    p.add_argument("--output", type=Path, help="default: <paths.interim>/<dataset>")

    p = _add_command(
        sub, "pack", _run_pack, "training images + dataset.json camera labels",
        "Write the training set: every image that passed the earlier stages (and pack.max_abs_yaw_deg) at\n"
        "the training resolution, and dataset.json with its camera label in the EG3D/GMPI layout\n"
        "(cam2world and normalised intrinsics); the images left out are counted.",
        "gmnr pack -S pack.resolution=64", [common], stage="pack")
    p.add_argument("--input", type=Path, help="aligned images (default: <paths.aligned>/<dataset>)")
    p.add_argument("--poses", type=Path, help="default: <paths.interim>/<dataset>/poses.csv")
    p.add_argument("--output", type=Path, help="default: <paths.processed>/<dataset>")

    run_options = argparse.ArgumentParser(add_help=False)
    run_options.add_argument("--ablation", metavar="NAME",
                             help="the named ablation ablations.NAME of params.yaml (its model and settings; run "
                                  "folder <paths.runs>/<dataset>/<model>+NAME)")
    p = _add_command(
        sub, "train", _run_train, "train params.model on the packed set (resumes by default)",
        "Train params.model (gmpi, gmnr, mvcgan, or stylegan2: the 2D backbone alone) on the packed set.\n"
        "Checkpoints go to the run folder, and a rerun resumes from the newest valid one. --gpus N runs N\n"
        "processes under torchrun; --nnodes/--node-rank/--master-addr spread them over machines.",
        "gmnr train -S model=gmnr -S train.steps=400", [common, run_options], stage="train")
    p.add_argument("--input", type=Path, help="packed training set (default: <paths.processed>/<dataset>)")
    p.add_argument("--output", type=Path, help="run folder (default: <paths.runs>/<dataset>/<model>, or "
                                               "<model>+<what differs from params.yaml>)")
    p.add_argument("--gpus", type=int, help="processes on this node under torchrun (default: train.gpus)")
    p.add_argument("--nnodes", type=int, default=1, help="machines taking part (torchrun --nnodes)")
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default=None, help="address of node 0 when --nnodes > 1")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)

    p = _add_command(
        sub, "render", _run_render, "multi-view and depth videos and a grid for a checkpoint",
        "Render a trained checkpoint: videos of one latent as the camera sweeps and circles, each with its\n"
        "depth video, and a grid of latents x views, into the run's render folder.",
        "gmnr render -S model=gmpi --checkpoint runs/demo/gmpi/final.pt", [common, run_options], stage="render")
    p.add_argument("--checkpoint", type=Path, help="default: <paths.runs>/<dataset>/<model>/final.pt")
    p.add_argument("--output", type=Path, help="default: <paths.runs>/<dataset>/<model>/render")

    p = _add_command(
        sub, "evaluate", _run_evaluate,
        "FID/KID, identity, depth and pose consistency, FPS of a checkpoint (GMPI protocol)",
        "Every metric of GMPI's protocol for a checkpoint (FID/KID against the packed set, identity, depth\n"
        "and pose consistency, FPS), written as JSON to --output and logged as one MLflow run. With\n"
        "evaluate.with_init the untrained (and, for a pretrained start, the pretrained) baselines are\n"
        "evaluated first, into files beside it (gmpi.json: gmpi-init.json, gmpi-pretrained.json).",
        "gmnr evaluate -S model=gmpi --output reports/demo/evaluate/gmpi.json   # what the pipeline runs",
        [common, run_options], stage="evaluate")
    p.add_argument("--checkpoint", type=Path, help="default: <paths.runs>/<dataset>/<model>/final.pt")
    p.add_argument("--input", type=Path, help="packed training set for FID/KID (default: <paths.processed>/<dataset>)")
    p.add_argument("--output", type=Path,
                   help="default: <paths.reports>/<dataset>/evaluate/<run>.json (<run>-<baseline>.json for a "
                        "baseline), the file the pipeline passes: <run> is the model (<model>+<ablation> for an "
                        "ablation); params that differ from params.yaml's add to <dataset> and <run>")
    baseline = p.add_mutually_exclusive_group()
    baseline.add_argument("--init", dest="baseline", action="store_const", const="init",
                          help="evaluate the checkpoint's architecture untrained (the trainer's seed)")
    baseline.add_argument("--pretrained", dest="baseline", action="store_const", const="pretrained",
                          help="evaluate the weights the run started from (gmpi.pretrained on that initialisation)")

    p = _add_command(
        sub, "export-weights", _run_export_weights,
        "write a checkpoint's G_ema and D as a weights file that gmpi.pretrained can start from",
        "Write a checkpoint's G_ema and D weights (float16 by default: half the size) to one file that\n"
        "gmpi.pretrained can name, and print its SHA-256 and size for the weights registry.",
        "gmnr export-weights -S model=stylegan2 --output weights/my-backbone.pt", [common],
        stage="export-weights")
    p.add_argument("--checkpoint", type=Path, help="default: <paths.runs>/<dataset>/<model>/final.pt")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")

    p = _add_command(
        sub, "compare", _run_compare,
        "table and plots of the latest evaluation of each (dataset, model, ablation)",
        "Collect the latest evaluation of each (dataset, model, ablation) from the tracking store and write\n"
        "the comparison table (table.md, table.csv) and its plots.",
        "gmnr compare --backend fid=clean-fid --output /tmp/results", [common], stage="compare")
    p.add_argument("--output", type=Path, help="default: <paths.results>")
    p.add_argument("--backend", dest="backends", action="append", default=[], metavar="METRIC=BACKEND",
                   help="the back end whose numbers fill METRIC's column, needed when the evaluations "
                        "used several (repeatable), e.g. --backend fid=clean-fid")
    return parser


def _dispatch(args: argparse.Namespace) -> dict | None:
    ablation = getattr(args, "ablation", None)
    data, source = read_params_file(args.params)
    if getattr(args, "from_dir", None):  # as -S download.from_dir: a custom dataset is named after it
        args.overrides = [*args.overrides, f"download.from_dir={json.dumps(str(args.from_dir))}"]
    params = resolve(data, args.overrides, source, ablation)
    context = _Context(params, progress=not args.no_progress)
    if args.stage is None:
        return args.func(args, context)
    from gmnr.experiment import DATA_STAGES, MODEL_STAGES, layout_for

    # Default paths: where the pipeline puts this run's files, in folders of its own when its params differ
    # from params.yaml's (gmnr.experiment).
    context.layout = layout_for(params, data, args.overrides, source, ablation)
    args.resolved = params
    if args.stage in DATA_STAGES + MODEL_STAGES:
        from gmnr.tracking import set_run_context
        set_run_context(context.layout.labels(args.stage))
    context.reports = args.reports or context.layout.reports_dir(args.stage if args.stage in DATA_STAGES else "pack")
    return args.func(args, context)


def _run_params(args: argparse.Namespace, context: _Context) -> None:
    if args.write_schema:
        print(f"wrote {write_schema()}")
    print(json.dumps(context.params.model_dump(mode="json"), indent=2))


def _run_source(args: argparse.Namespace, context: _Context) -> dict:
    """The source stage: render a synthetic source (the demo), else download or read the images."""
    return (_run_synth if context.params.source().kind == "synth" else _run_download)(args, context)


def _run_synth(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr import stages
    from gmnr.data.registry import LOCAL_SOURCES
    params = context.params
    # `gmnr synth` under another dataset renders the synthetic source all the same: into its own folder, not
    # that dataset's.
    synthetic = next(s.name for s in LOCAL_SOURCES.values() if s.kind == "synth")
    default = context.layout.raw_dir() if params.dataset == synthetic else Path(params.paths.raw) / synthetic
    return stages.run_synth(params, args.output or default, context.reports, context.progress)


def _run_download(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr import stages
    params = context.params
    if params.source().kind == "synth":
        raise ParamsError(f"dataset '{params.dataset}' is generated, not downloaded: use `gmnr synth`")
    downloads = args.downloads or Path(params.paths.downloads)
    from_dir = args.from_dir or params.download.from_dir
    return stages.run_download(params, args.output or context.layout.raw_dir(), context.reports, downloads, from_dir,
                               context.progress)


def _run_landmarks(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr import stages
    layout = context.layout
    return stages.run_landmarks(context.params, args.input or layout.raw_dir(),
                                args.output or layout.interim_dir("landmarks"), context.reports, context.progress)


def _run_align(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr import stages
    layout = context.layout
    landmarks = args.landmarks or layout.interim_dir("landmarks") / "landmarks.csv"
    return stages.run_align(context.params, args.input or layout.raw_dir(), landmarks,
                            args.output or layout.aligned_dir(), context.reports, context.progress)


# pose and pack read the align stage's folder: its images and the landmarks carried into them.

def _run_pose(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr import stages
    layout = context.layout
    image_dir = args.input or layout.aligned_dir()
    # the align stage's folder holds both: --input alone means its landmarks too
    landmarks = args.landmarks or image_dir / "landmarks.csv"
    return stages.run_pose(context.params, image_dir, landmarks, args.output or layout.interim_dir("pose"),
                           context.reports, context.progress)


def _run_pack(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr import stages
    layout = context.layout
    poses = args.poses or layout.interim_dir("pose") / "poses.csv"
    return stages.run_pack(context.params, args.input or layout.aligned_dir(), poses,
                           args.output or layout.processed_dir(), context.reports, context.progress)


def _run_render(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr import stages
    layout = context.layout
    return stages.run_render_staged(context.params, args.checkpoint or layout.run_dir() / "final.pt",
                                    args.output or layout.render_dir(), context.progress)


def _run_evaluate(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr.eval.evaluate import evaluate
    params, layout, progress, ablation = context.params, context.layout, context.progress, args.ablation
    checkpoint, real = args.checkpoint or layout.run_dir() / "final.pt", args.input or layout.processed_dir()
    output = args.output or layout.evaluation_report()
    if args.baseline and not args.output:
        output = output.with_name(f"{output.stem}-{args.baseline}{output.suffix}")
    check_outputs_clear_of_inputs([output], [checkpoint, real])
    if not checkpoint.is_file():  # before anything else: every metric needs it, even the init baseline's config
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist (train first, or pass --checkpoint)")
    # The baselines first (the table shows what training bought), once per (dataset, model): with the
    # evaluation of the run params.yaml defines, not again with every ablation.
    if params.evaluate.with_init and not args.baseline and not ablation and not layout.model_differences():
        from gmnr.eval.evaluate import baselines_of
        for baseline in baselines_of(checkpoint):
            out = output.with_name(f"{output.stem}-{baseline}{output.suffix}")
            evaluate(params, checkpoint, real, out, baseline, progress, layout.reference, ablation)
    return evaluate(params, checkpoint, real, output, args.baseline, progress, layout.reference, ablation)


def _run_export_weights(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr.models.pretrained import export_weights
    checkpoint = args.checkpoint or context.layout.run_dir() / "final.pt"
    check_outputs_clear_of_inputs([args.output], [checkpoint])
    return export_weights(checkpoint, args.output, args.dtype)


def _run_compare(args: argparse.Namespace, context: _Context) -> dict:
    from gmnr.eval.compare import run_compare
    return run_compare(context.params, args.output or Path(context.params.paths.results), args.backends)


def _run_train(args: argparse.Namespace, context: _Context) -> dict | None:
    from gmnr.staging import output_lock
    params, layout = context.params, context.layout
    nproc = args.gpus if args.gpus is not None else params.train.gpus
    data, run_dir = args.input or layout.processed_dir(), args.output or layout.run_dir()
    check_outputs_clear_of_inputs([run_dir], [data])
    if (nproc > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        from gmnr.train.distributed import launch_torchrun
        argv, skip = [], False
        for a in args.argv:  # the same command for every process, minus the launcher's options
            if skip or a.startswith(("--gpus", "--nnodes", "--node-rank", "--master-addr", "--master-port")):
                skip = "=" not in a and not skip
                continue
            argv.append(a)
        argv += ["--output", str(run_dir)] if args.output is None else []  # every process: the launcher's folder
        # Held by the launcher for all its processes; with several nodes by node 0's only: only rank 0
        # writes, and on a shared filesystem every node's launcher names the same folder.
        with output_lock(run_dir, "train") if args.node_rank == 0 else contextlib.nullcontext():
            os.environ[TRAIN_LOCK_ENV] = str(Path(run_dir).resolve())
            code = launch_torchrun(max(nproc, 1), argv, args.nnodes, args.node_rank, args.master_addr,
                                   args.master_port)
        if code:
            raise RuntimeError(f"torchrun exited with status {code}")
        return None
    from gmnr.train.loop import train
    locked_by_launcher = os.environ.get(TRAIN_LOCK_ENV) == str(Path(run_dir).resolve())
    rank0 = os.environ.get("RANK", "0") == "0"
    # One writer per run folder: a second `gmnr train` on it (another params, or the same) is refused
    # before it reads or moves anything. Under torchrun the launcher (or else rank 0) holds the lock.
    lock = output_lock(run_dir, "train") if rank0 and not locked_by_launcher else contextlib.nullcontext()
    with lock:
        return train(params, data, run_dir, context.progress, stop_after=args.stop_after)


TRAIN_LOCK_ENV = "GMNR_TRAIN_LOCKED"


# What a user's input can cause: one line naming the file or key, exit 2, never a traceback.
# UnpicklingError covers UnsafePickleError (a refused global); OSError a permission, a full disk,
# a file that vanished; the archive errors a damaged zip or tar.
EXPECTED_ERRORS = (ParamsError, KeyError, ValueError, RuntimeError, OSError, pickle.UnpicklingError,
                   tarfile.TarError, zipfile.BadZipFile, EOFError)


ENGINE_ENV = "GMNR_ENGINE"  # set by the Snakefile for its jobs (DVC sets DVC_STAGE for its own)


def _record_in_dvc(args: argparse.Namespace) -> None:
    """A stage run by hand into the pipeline's own paths under exactly params.yaml's values (no
    override but the model, no path option) is recorded in dvc.lock, as the Snakefile records a
    Snakemake run: otherwise ``dvc exp run``, which first checks out what dvc.lock records, would
    replace these outputs with the recorded ones, or remove them when its cache lacks those."""
    from gmnr.config import PROJECT_ROOT
    stage, params = getattr(args, "stage", None), getattr(args, "resolved", None)
    if stage is None or os.environ.get("DVC_STAGE") or os.environ.get(ENGINE_ENV):
        return  # an engine runs this command: it records its own outputs
    if not (PROJECT_ROOT / ".dvc").is_dir() or Path.cwd().resolve() != PROJECT_ROOT or args.params or args.reports:
        return
    options = ("input", "output", "checkpoint", "landmarks", "poses", "downloads", "from_dir", "baseline")
    if any(getattr(args, o, None) for o in options) or getattr(args, "stop_after", None):
        return
    models = params.models
    if any(not (o.startswith("model=") and o.split("=", 1)[1].strip() in models) for o in args.overrides):
        return
    if stage in ("train", "render", "evaluate"):
        name = f"ablation-{stage}@{args.ablation}" if args.ablation else f"{stage}@{params.model}"
    elif args.command == "synth" and params.source().kind != "synth":
        return
    else:
        name = stage
    from gmnr.pipeline_spec import commit_outputs_to_dvc, load_stages
    stages = load_stages(PROJECT_ROOT / "dvc.yaml", params.model_dump(mode="json"))
    if name not in stages:
        return
    outputs = stages[name].outs + stages[name].metrics
    if commit_outputs_to_dvc(PROJECT_ROOT, outputs, [name]):
        print(f"gmnr: recorded the outputs of stage {name} in dvc.lock (made by hand under params.yaml's values)",
              file=sys.stderr)
    else:
        print(f"gmnr: warning: `dvc commit {name}` failed; dvc.lock does not record these outputs, and "
              f"`dvc exp run` would replace them", file=sys.stderr)


def _date_dvc_outputs(args: argparse.Namespace) -> None:
    """Under DVC, the folders a stage outputs are dated now once it has run. Its outs are `persist: true`
    (DVC deletes nothing before a stage runs), so a folder the stage left in place (a resumed run's
    samples) or refilled keeps Snakemake's `.snakemake_timestamp` of an earlier Snakemake run: Snakemake
    would take the folder for older than the inputs DVC just remade, and run the stage again where DVC
    sees nothing to do. (Files the stage writes are dated by writing them.)"""
    addressing, params = os.environ.get("DVC_STAGE", ""), getattr(args, "resolved", None)
    if not addressing or params is None:
        return
    from gmnr.config import PROJECT_ROOT
    from gmnr.pipeline_spec import is_directory, load_stages
    name = addressing.rsplit(":", 1)[-1]  # "dvc.yaml:train@gmpi" for a dvc.yaml outside the root
    try:
        stage = load_stages(PROJECT_ROOT / "dvc.yaml", params.model_dump(mode="json")).get(name)
    except (OSError, ValueError, KeyError):
        return
    for out in (stage.outs if stage else []):
        folder = Path(out)
        if is_directory(out) and folder.is_dir():
            marker = folder / ".snakemake_timestamp"
            if marker.is_file():
                os.utime(marker)
            os.utime(folder)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        report = _dispatch(args)
        _record_in_dvc(args)
        _date_dvc_outputs(args)
    except EXPECTED_ERRORS as exc:
        if os.environ.get("GMNR_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"gmnr {args.command}: error: {message}", file=sys.stderr)
        return 2
    if report:
        brief = {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
        print(json.dumps(brief, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
