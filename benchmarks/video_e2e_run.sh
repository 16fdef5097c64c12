#!/usr/bin/env bash
# The video clip classifier end to end on one GPU, before and after a change, in one command on the device
# machine: installs the offline wheels (as ddp_run.sh), generates the frame-folder clips (benchmarks/coco_like.py),
# runs benchmarks/video_e2e.py for every tree named in TREES (name=path, the last one also times the model-only
# step), one after the other so that each has the machine's CPUs alone, and merges the report.
#
#   TREES="before=../base after=." WHEELS=../../.whl OUT=/tmp/ve TAG=h100 bash benchmarks/video_e2e_run.sh
#
# Writes under $OUT (seven files): video_e2e_<tag>.json / .md, profile_<name>.txt, nvidia-smi.txt, run.log; the
# training folders (checkpoints included) stay under $RUNS.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-/tmp/video_e2e}
python=${PYTHON:-python3}
tag=${TAG:-h100}
trees=${TREES:?set TREES="before=PATH after=PATH"}
runs=${RUNS:-/tmp/video_e2e_runs}
mkdir -p "$out" "$runs"
start=$(date +%s)
if [ -z "${SKIP_WHEELS:-}" ]; then
  wheels=$(cd "${WHEELS:-.wheels}" && pwd) || { echo "video_e2e_run.sh: no wheels at ${WHEELS:-.wheels}" >&2; exit 2; }
  site=${SITE:-/tmp/hiera_det_site}
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl || exit 2
  export PYTHONPATH="$site:$wheels/d2${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$runs/nvidia-smi.txt" 2>&1 \
  || echo "no GPU ($(nproc) CPUs)" >"$runs/nvidia-smi.txt"
data=${DATA:-/tmp/coco_like_video}
{
  echo "== data ($(( $(date +%s) - start )) s)"
  [ -f "$data/specs.json" ] || PYTHONPATH="$PWD:$PYTHONPATH" "$python" -m benchmarks.coco_like --root "$data" \
    --num-train 4 --num-val 2 --videos "${NUM_VIDEOS:-48}" >/dev/null || exit 3
  last=${trees##* }
  for entry in $trees; do
    name=${entry%%=*}
    echo "== $name ($(( $(date +%s) - start )) s)"
    extra=()
    [ "$entry" = "$last" ] && extra+=(--model-only)
    timeout --signal=INT --kill-after=10 "${RUN_TIMEOUT:-100}" "$python" benchmarks/video_e2e.py --tree "${entry#*=}" --name "$name" --data "$data" --out "$runs" \
      ${ARGS:-} "${extra[@]}" >"$runs/$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$runs/$name.log"; }
    tail -1 "$runs/$name.log"
  done
  "$python" benchmarks/video_e2e.py --report "$runs" --tag "$tag" --out "$out" \
    --earlier benchmarks/results/ddp_video_h100x2.json && cat "$out/video_e2e_$tag.md"
  cp "$runs/nvidia-smi.txt" "$out/"
  for entry in $trees; do cp "$runs/${entry%%=*}/profile.txt" "$out/profile_${entry%%=*}.txt" 2>/dev/null; done
  echo "== done after $(( $(date +%s) - start )) s"
} 2>&1 | tee "$out/run.log"
