#!/usr/bin/env bash
# The GPU benchmark in one command, for a machine with one CUDA GPU, PyTorch, timm and transformers, Python
# 3.12 and no network (the project's device machine). Installs the pure-Python wheels that
# ../shared/tools/offline-wheels.sh put in .wheels/ (detectron2 under .wheels/d2, fvcore, iopath, yacs,
# omegaconf, hydra-core, pycocotools, the official hiera-transformer), then runs tools/benchmark.py (the
# benchmarks package of this checkout, benchmarks/run.py).
#
#   bash benchmarks/gpu_run.sh [extra tools/benchmark.py arguments]
#   ENTRY=benchmarks/perf_run.py bash benchmarks/gpu_run.sh --tag NAME     # issue 16's figures, one process
#
# Writes <tag>.json / .md / .png, benchmark.log and nvidia-smi.txt under $OUT (default benchmarks/results).
# Finishes in under 9 minutes: the benchmark stops starting new work after --time-budget seconds (what is
# left is recorded as skipped), and a hard stop at 505 s interrupts it; results are rewritten after every
# measurement, so an interrupted run keeps everything it measured.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python=${PYTHON:-python3}

if ! ls .wheels/*.whl >/dev/null 2>&1 || [ ! -d .wheels/d2/detectron2 ]; then
  echo "gpu_run.sh: .wheels/ is missing or incomplete. Build it here with" \
       "'bash ../shared/tools/offline-wheels.sh .wheels' and carry .wheels to this machine." >&2
  exit 2
fi
site=${SITE:-/tmp/hiera_det_site}
"$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .wheels/*.whl || {
  echo "gpu_run.sh: installing .wheels/*.whl into $site failed (see above)" >&2; exit 2; }
export PYTHONPATH="$site:$PWD/.wheels/d2:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Without expandable segments ViTDet-B's training iteration (about 69 GiB at batch 8) fails to find a
# contiguous block on an 80 GB card and stops with an out-of-memory error; with them it fits.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,temperature.gpu,power.limit \
  --format=csv >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi unavailable" >"$out/nvidia-smi.txt"

# Eager (compile off) for every case and dtype first, then torch.compile in bf16 for the cases where it
# matters most, as long as the budget lasts. Extra arguments override these (argparse: last one wins).
# ENTRY=benchmarks/perf_run.py runs that driver instead (issue 16's figures), with --out and the extra
# arguments only.
if [ -n "${ENTRY:-}" ]; then
  command=("$python" "$ENTRY" --out "$out" "$@")
else
  command=("$python" tools/benchmark.py
    --out "$out"
    --dtypes bf16,fp16,fp32
    --compile off,on
    --compile-dtypes bf16
    --compile-cases hiera_b_224,hiera_b_fpn_1024,maskrcnn_train_1024,hiera_b_16x224_video,maskrcnn_infer_1024
    --time-budget 430
    "$@")
fi
timeout --signal=INT --kill-after=15 505 "${command[@]}" 2>&1 | tee "$out/benchmark.log"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ] || [ "$status" = 130 ]; then
  echo "gpu_run.sh: stopped at the 505 s limit; the results written so far are complete up to the last item" \
    | tee -a "$out/benchmark.log"
fi
ls -l "$out"
exit "$status"
