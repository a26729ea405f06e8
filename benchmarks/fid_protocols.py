"""FID of a run's generator under both FID protocols, for its final, pretrained and untrained weights.

The evaluation stage computes one protocol (``evaluate.fid_protocol``); this script measures how far
the two protocols differ on the same generated images: ``torch-fidelity`` (TF1 bilinear resize to
299 px inside the network, as GMPI and GMNR computed their FIDs) and ``clean`` (clean-fid's PIL
bicubic resize), both on the same InceptionV3 weights. Run it in a project where the demo has run:

    python benchmarks/fid_protocols.py runs/demo/gmpi/final.pt runs/demo/gmnr/final.pt

It prints one line per (checkpoint, weights) and, with ``--out``, writes a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROTOCOLS = ("torch-fidelity", "clean")


def fids(checkpoint: Path, baseline: str | None, images: int | None, threads: int) -> dict:
    import torch

    from gmnr.eval.evaluate import _load
    from gmnr.eval.metrics import EvalContext
    from gmnr.eval.metrics.fid import FIDKID
    from gmnr.eval.metrics.inception import load_extractor
    from gmnr.train.checkpoint import load_with_params

    torch.set_num_threads(threads)
    params, _ = load_with_params(checkpoint)
    G, trained, _, weights = _load(params, checkpoint, baseline, torch.device("cpu"))
    cam, e = trained.model_camera(), trained.evaluate
    n_planes = trained.gmpi.planes_eval if trained.model in ("gmpi", "gmnr") else None
    real = Path(trained.paths.processed) / trained.dataset
    cache = Path(trained.paths.runs) / trained.dataset / ".cache"
    out = {"checkpoint": str(checkpoint), "weights": baseline or "final", "images": images or e.fid_images}
    for protocol in PROTOCOLS:
        ctx = EvalContext(resolution=trained.training_resolution(), fov_deg=cam.fov_deg, radius=cam.radius,
                          center=tuple(cam.center), yaw_std=cam.yaw_std, pitch_std=cam.pitch_std,
                          truncation=cam.truncation, n_planes=n_planes, device=torch.device("cpu"),
                          seed=trained.seed, batch_size=e.batch_size)
        metric = FIDKID(real, images or e.fid_images, e.fid_real_max, e.kid_subsets, e.kid_subset_size, cache,
                        extractor=load_extractor(e.inception, "cpu", protocol))
        out[protocol] = float(metric.compute(G, ctx)["fid"])
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--baselines", nargs="*", default=["init", "pretrained"],
                        help="also these baselines of each run (evaluate's init / pretrained)")
    parser.add_argument("--images", type=int, default=None, help="generated images (default: evaluate.fid_images)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write a markdown table here")
    args = parser.parse_args()
    from gmnr.eval.evaluate import baselines_of
    rows = []
    for checkpoint in args.checkpoints:
        for baseline in [b for b in args.baselines if b in baselines_of(checkpoint)] + [None]:
            rows.append(fids(checkpoint, baseline, args.images, args.threads))
    if args.out:
        lines = ["| checkpoint | weights | images | FID torch-fidelity | FID clean | clean - torch-fidelity |",
                 "|---|---|--:|--:|--:|--:|"]
        lines += [f"| `{r['checkpoint']}` | {r['weights']} | {r['images']} | {r['torch-fidelity']:.2f} | "
                  f"{r['clean']:.2f} | {r['clean'] - r['torch-fidelity']:+.2f} |" for r in rows]
        lines.append(f"\n`python benchmarks/fid_protocols.py {' '.join(sys.argv[1:])}`")
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
