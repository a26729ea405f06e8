#!/usr/bin/env bash
# The render benchmarks on a CUDA GPU, in one go (a lent GPU's time is short): GMNR's view-dependent colour
# against GMPI per frame of a 48-frame video at 256, 512 and 1024 px with 96 planes in bfloat16 (GMNR's
# published speed: 17.6 FPS at 1024 px on one V100), the same at 1024 px in float16, and MVCGAN against
# GMPI and GMNR per frame at 256 and 512 px. Writes three sections of docs/benchmarks.md (or of the file
# given as the first argument). PYTHON names the interpreter (default: python).
#
#     bash benchmarks/gpu_render_speed.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/benchmarks.md}"
python="${PYTHON:-python}"
"$python" benchmarks/render_speed.py --video 48 --device cuda --dtype bfloat16 --models gmpi gmnr \
    --gmnr-vdr baked all off --resolutions 256 512 1024 --planes 96 --timed-frames 4 --out "$out" \
    --section "Video render speed on a GPU, bfloat16 (48 frames)"
"$python" benchmarks/render_speed.py --video 48 --device cuda --dtype float16 --models gmpi gmnr \
    --gmnr-vdr baked off --resolutions 1024 --planes 96 --timed-frames 4 --out "$out" \
    --section "Video render speed on a GPU, float16, 1024 px (48 frames)"
"$python" benchmarks/render_speed.py --device cuda --models gmpi gmnr mvcgan --gmnr-vdr all off \
    --resolutions 256 512 --planes 96 --repeats 5 --out "$out" --section "MVCGAN against GMPI and GMNR on a GPU"
