"""``gmnr`` command line: one subcommand per pipeline stage.

Every path option defaults to where params.yaml puts it for the selected dataset, so
``gmnr landmarks`` inside the pipeline and ``gmnr landmarks --input my_faces/ --output out/`` by
hand run the same code. Params are validated before anything is read or written.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tarfile
import zipfile
from pathlib import Path

from gmnr.config import ParamsError, load_params, write_schema
from gmnr.staging import check_outputs_clear_of_inputs


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    common.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, as in `dvc exp run -S` (repeatable), e.g. -S synth.count=50")
    common.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    common.add_argument("--reports", type=Path, help="stage report folder (default: <paths.reports>/<dataset>)")

    parser = argparse.ArgumentParser(prog="gmnr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("params", parents=[common], help="validate params and print them resolved")
    p.add_argument("--write-schema", action="store_true", help="regenerate workflow/schemas/params.schema.json")

    p = sub.add_parser("source", parents=[common],
                       help="the pipeline's first stage: `synth` for dataset=demo, else `download`")
    p.add_argument("--output", type=Path, help="raw dataset folder (default: <paths.raw>/<dataset>)")

    p = sub.add_parser("synth", parents=[common], help="render the procedural demo dataset")
    p.add_argument("--output", type=Path, help="default: <paths.raw>/demo")

    p = sub.add_parser("download", parents=[common], help="download (or take --from) a registry dataset")
    p.add_argument("--output", type=Path, help="default: <paths.raw>/<dataset>")
    p.add_argument("--downloads", type=Path, help="archive cache (default: <paths.downloads>)")
    p.add_argument("--from", dest="from_dir", help="use archives/images you already have in this folder")

    p = sub.add_parser("landmarks", parents=[common], help="MTCNN boxes + 5 landmarks for every image")
    p.add_argument("--input", type=Path, help="raw dataset folder (default: <paths.raw>/<dataset>)")
    p.add_argument("--output", type=Path, help="default: <paths.interim>/<dataset>")

    p = sub.add_parser("pose", parents=[common], help="head pose per image (builtin PnP or Deep3DFaceRecon)")
    p.add_argument("--input", type=Path, help="raw dataset folder (default: <paths.raw>/<dataset>)")
    p.add_argument("--landmarks", type=Path, help="default: <paths.interim>/<dataset>/landmarks.csv")
    p.add_argument("--output", type=Path, help="default: <paths.interim>/<dataset>")

    p = sub.add_parser("pack", parents=[common], help="training images + dataset.json camera labels")
    p.add_argument("--input", type=Path, help="raw dataset folder (default: <paths.raw>/<dataset>)")
    p.add_argument("--poses", type=Path, help="default: <paths.interim>/<dataset>/poses.csv")
    p.add_argument("--output", type=Path, help="default: <paths.processed>/<dataset>")
    p = sub.add_parser("train", parents=[common], help="train params.model on the packed set (resumes by default)")
    p.add_argument("--input", type=Path, help="packed training set (default: <paths.processed>/<dataset>)")
    p.add_argument("--output", type=Path, help="run folder (default: <paths.runs>/<dataset>/<model>)")
    p.add_argument("--gpus", type=int, help="processes on this node under torchrun (default: train.gpus)")
    p.add_argument("--nnodes", type=int, default=1, help="machines taking part (torchrun --nnodes)")
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default=None, help="address of node 0 when --nnodes > 1")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)

    p = sub.add_parser("render", parents=[common], help="multi-view and depth videos and a grid for a checkpoint")
    p.add_argument("--checkpoint", type=Path, help="default: <paths.runs>/<dataset>/<model>/final.pt")
    p.add_argument("--output", type=Path, help="default: <paths.runs>/<dataset>/<model>/render")

    p = sub.add_parser("evaluate", parents=[common],
                       help="FID/KID, identity, depth and pose consistency, FPS of a checkpoint (GMPI protocol)")
    p.add_argument("--checkpoint", type=Path, help="default: <paths.runs>/<dataset>/<model>/final.pt")
    p.add_argument("--input", type=Path, help="packed training set for FID/KID (default: <paths.processed>/<dataset>)")
    p.add_argument("--output", type=Path,
                   help="default: <paths.runs>/<dataset>/<model>/metrics.json (metrics_<baseline>.json for a baseline)")
    baseline = p.add_mutually_exclusive_group()
    baseline.add_argument("--init", dest="baseline", action="store_const", const="init",
                          help="evaluate the checkpoint's architecture untrained (the trainer's seed)")
    baseline.add_argument("--pretrained", dest="baseline", action="store_const", const="pretrained",
                          help="evaluate the weights the run started from (gmpi.pretrained on that initialisation)")

    p = sub.add_parser("export-weights", parents=[common],
                       help="write a checkpoint's G_ema and D as a weights file that gmpi.pretrained can start from")
    p.add_argument("--checkpoint", type=Path, help="default: <paths.runs>/<dataset>/<model>/final.pt")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")

    p = sub.add_parser("compare", parents=[common],
                       help="table and plots of the latest evaluation of each (dataset, model, ablation)")
    p.add_argument("--output", type=Path, help="default: <paths.results>")
    p.add_argument("--backend", dest="backends", action="append", default=[], metavar="METRIC=BACKEND",
                   help="the back end whose numbers fill METRIC's column, needed when the evaluations "
                        "used several (repeatable), e.g. --backend fid=clean-fid")
    return parser


def _dispatch(args: argparse.Namespace) -> dict | None:
    params = load_params(args.params, args.overrides)
    progress = not args.no_progress
    reports = args.reports or params.reports_dir()
    from gmnr import stages

    if args.command == "params":
        if args.write_schema:
            print(f"wrote {write_schema()}")
        print(json.dumps(params.model_dump(mode="json"), indent=2))
        return None
    if args.command in ("source", "synth", "download"):
        output = args.output or params.raw_dir()
        if args.command == "synth" or (args.command == "source" and params.dataset == "demo"):
            if args.command == "synth" and args.output is None:
                output = Path(params.paths.raw) / "demo"
            return stages.run_synth(params, output, reports, progress)
        if params.dataset == "demo":
            raise ParamsError("dataset 'demo' is generated, not downloaded: use `gmnr synth`")
        downloads = getattr(args, "downloads", None) or Path(params.paths.downloads)
        from_dir = getattr(args, "from_dir", None) or params.download.from_dir
        return stages.run_download(params, output, reports, downloads, from_dir, progress)
    if args.command == "train":
        return _train(args, params, progress)
    if args.command == "evaluate":
        from gmnr.eval.evaluate import evaluate
        checkpoint, real = args.checkpoint or params.run_dir() / "final.pt", args.input or params.processed_dir()
        check_outputs_clear_of_inputs([args.output], [checkpoint, real])
        if not checkpoint.is_file():  # before anything else: every metric needs it, even the init baseline's config
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist (train first, or pass --checkpoint)")
        if params.evaluate.with_init and not args.baseline:  # the baselines first: the table shows them all
            from gmnr.eval.evaluate import baselines_of
            for baseline in baselines_of(checkpoint):
                out = args.output and args.output.with_name(f"{args.output.stem}-{baseline}{args.output.suffix}")
                evaluate(params, checkpoint, real, out, baseline, progress)
        return evaluate(params, checkpoint, real, args.output, args.baseline, progress)
    if args.command == "export-weights":
        from gmnr.models.pretrained import export_weights
        checkpoint = args.checkpoint or params.run_dir() / "final.pt"
        check_outputs_clear_of_inputs([args.output], [checkpoint])
        return export_weights(checkpoint, args.output, args.dtype)
    if args.command == "compare":
        from gmnr.eval.compare import run_compare
        return run_compare(params, args.output or Path(params.paths.results), args.backends)
    if args.command == "render":
        return stages.run_render_staged(params, args.checkpoint or params.run_dir() / "final.pt",
                                        args.output or params.run_dir() / "render", progress)
    image_dir = args.input or params.raw_dir()
    if args.command == "landmarks":
        return stages.run_landmarks(params, image_dir, args.output or params.interim_dir(), reports, progress)
    if args.command == "pose":
        landmarks = args.landmarks or params.interim_dir() / "landmarks.csv"
        return stages.run_pose(params, image_dir, landmarks, args.output or params.interim_dir(), reports, progress)
    if args.command == "pack":
        poses = args.poses or params.interim_dir() / "poses.csv"
        return stages.run_pack(params, image_dir, poses, args.output or params.processed_dir(), reports, progress)
    raise AssertionError(f"unhandled command {args.command}")


def _train(args: argparse.Namespace, params, progress: bool) -> dict | None:
    nproc = args.gpus if args.gpus is not None else params.train.gpus
    if (nproc > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        from gmnr.train.distributed import launch_torchrun
        argv, skip = [], False
        for a in args.argv:  # the same command for every process, minus the launcher's options
            if skip or a.startswith(("--gpus", "--nnodes", "--node-rank", "--master-addr", "--master-port")):
                skip = "=" not in a and not skip
                continue
            argv.append(a)
        code = launch_torchrun(max(nproc, 1), argv, args.nnodes, args.node_rank, args.master_addr, args.master_port)
        if code:
            raise RuntimeError(f"torchrun exited with status {code}")
        return None
    from gmnr.train.loop import train
    data, run_dir = args.input or params.processed_dir(), args.output or params.run_dir()
    check_outputs_clear_of_inputs([run_dir], [data])
    return train(params, data, run_dir, progress, stop_after=args.stop_after)


# What a user's input can cause: one line naming the file or key, exit 2, never a traceback.
# UnpicklingError covers UnsafePickleError (a refused global); OSError a permission, a full disk,
# a file that vanished; the archive errors a damaged zip or tar.
EXPECTED_ERRORS = (ParamsError, KeyError, ValueError, RuntimeError, OSError, pickle.UnpicklingError,
                   tarfile.TarError, zipfile.BadZipFile, EOFError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        report = _dispatch(args)
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
