#!/usr/bin/env bash
# The GPU measurements of issues 13 and 25 in one run (README "GPU figures"). Run from the repository root on a
# machine with a CUDA GPU and torch, numpy, onnxruntime, scikit-learn, scikit-image, typer and rich installed.
# Optional: wheels of the other dependencies in .whl/ (installed to /tmp/site), and an image-folder benchmark
# written by `scripts/scene_folders.py .gpu/scenes ...` for the end-to-end `tagood bench --device cuda` check.
# Output: $OUT/log (default ./device-check/log); the end-to-end run's results.md and run.log beside it.
set -u
OUT=${OUT:-device-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} TAGOOD_HOME=/tmp/tagood-home
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
step() { echo; echo "=== $1 (limit $2 s)"; shift; local lim=$1; shift; local t=$SECONDS; timeout "$lim" "$@"; echo "--- rc $? in $((SECONDS - t)) s"; }
# extraction (issue 25): pipeline vs min(decode alone, forward alone), printed last as pipeline_vs_slower_stage
step "extraction: EfficientNet-Lite0 pipeline vs its slower stage, 8 decode processes" 120 python3 benchmarks/extract_throughput.py --device cuda --n 2048 --batch-size 128 --workers 8
step "extraction with 16 decode processes" 120 python3 benchmarks/extract_throughput.py --device cuda --n 2048 --batch-size 128 --workers 16
step "extraction with 8 decode threads (the former pool)" 120 python3 benchmarks/extract_throughput.py --device cuda --n 2048 --batch-size 128 --workers 8 --decode threads
step "projector training throughput" 150 python3 benchmarks/train_throughput.py --device cuda --warmup 10 --steps 60 --profile 6
step "TagOOD batched vs single" 60 python3 benchmarks/tagood_batched_vs_single.py --device cuda
step "KR-NFT batched vs single" 60 python3 benchmarks/krnft_batched_vs_single.py --device cuda --threads 16
if [ -f .gpu/scenes/bench.toml ]; then
  step "end to end: tagood bench --device cuda on scene folders" 150 python3 -m tagood bench .gpu/scenes/bench.toml --device cuda --out /tmp/device-run
  cp /tmp/device-run/results.md /tmp/device-run/run.log "$OUT"/ 2>/dev/null
fi
