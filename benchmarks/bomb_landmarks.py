"""Peak memory and time of `gmnr landmarks` on a folder with one decompression-bomb PNG and one face.

The bomb is a valid 10000 x 10000 RGB PNG of about 300 KB (300 MB once decoded; the issue measured
84 s and 14.7 GB of MTCNN on it before images.max_pixels existed). The face is one synthetic head
(gmnr synth, 256 px). Peak memory is the stage process's maximum resident set (getrusage of the
child); time is its wall clock, TensorFlow's import included.

    python benchmarks/bomb_landmarks.py             # the bomb and the face
    python benchmarks/bomb_landmarks.py --no-bomb   # the face alone: what the stage costs anyway
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_bomb(path: Path, side: int = 10000) -> None:
    """A valid side x side black RGB PNG, compressed row by row (never 300 MB in memory here)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def main() -> int:
    with_bomb = "--no-bomb" not in sys.argv[1:]
    scratch = Path(tempfile.mkdtemp(prefix="gmnr-bomb-"))
    try:
        images = scratch / "raw" / "images"
        images.mkdir(parents=True)
        if with_bomb:
            write_bomb(images / "bomb.png")
        from gmnr.data import synth
        synth.generate(scratch / "face", 1, 256, 0, synth.FFHQ_CAMERA, 0.0, progress=False)
        shutil.copy(scratch / "face" / "images" / "000000.png", images / "face.png")
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}")
        cmd = [sys.executable, "-m", "gmnr", "landmarks", "--no-progress", "--input", str(scratch / "raw"),
               "--output", str(scratch / "interim"), "--reports", str(scratch / "reports")]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = json.loads((scratch / "reports" / "landmarks.json").read_text()) if done.returncode == 0 else {}
        result = {"exit": done.returncode, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb),
                  "bomb_png_bytes": (images / "bomb.png").stat().st_size if with_bomb else 0,
                  "faces_found": report.get("faces_found"), "too_large": report.get("too_large"),
                  "skipped": report.get("skipped")}
        print(json.dumps(result, indent=1))
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
