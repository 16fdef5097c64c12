#!/usr/bin/env bash
# End-to-end DDP training benchmark in one command, on a machine with N CUDA GPUs, PyTorch, Python 3.12 and no
# network (the project's device machine). Installs the offline wheels (as gpu_run.sh: detectron2 under
# $WHEELS/d2, fvcore, iopath, pycocotools, ...; plus shapely from $EXTRA_WHEELS, which only the Detectron2
# polygon path that benchmarks/mask_targets_speed.py times needs), generates COCO-like data
# (benchmarks/coco_like.py), then runs benchmarks/ddp.py: tools/train_net.py --num-gpus 1, 2 (and 4) for the
# image Mask R-CNN (GPU mask targets, and the bitmask way before them), the video clip classifier and the
# clip-to-keyframe detector, each model's model-only step, the mask-target timing, the 2-GPU kill-and-resume
# check; then loss curves on 1 (two seeds) and 2 (and N) GPUs at the same global batch, the 2-GPU checkpoint
# resumed on 1 (and N) GPUs (benchmarks/resume_check.py), distributed evaluation on 1 and N GPUs, and the
# losses synchronised every step against every 20; and the loader profile while time is left (PROFILE_LOADER=0:
# never).
#
#   bash benchmarks/ddp_run.sh N [extra benchmarks/ddp.py arguments]
#   TAG=video_h100x2 bash benchmarks/ddp_run.sh 2 --models video_cls,clip_det --iters 60   # session 5's run
#
# Writes ddp_<tag>.json / .md, ddp_<tag>_gpu_samples.csv, loader_profile.json, ddp_run.log and nvidia-smi.txt
# under $OUT (default benchmarks/results). Finishes in about $BUDGET + 60 seconds (default 420): no job starts
# after the budget, and the results are rewritten after every phase.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
gpus=${1:?usage: bash benchmarks/ddp_run.sh N [ddp.py arguments]}
shift
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python=${PYTHON:-python3}
wheels=${WHEELS:-.wheels}
wheels=$(cd "$wheels" 2>/dev/null && pwd || echo "$wheels")  # absolute: PYTHONPATH below needs it
budget=${BUDGET:-420}
tag=${TAG:-h100x${gpus}}
start=$(date +%s)

if ! ls "$wheels"/*.whl >/dev/null 2>&1 || [ ! -d "$wheels/d2/detectron2" ]; then
  echo "ddp_run.sh: $wheels is missing or incomplete; build it with ../shared/tools/offline-wheels.sh and carry it" >&2
  exit 2
fi
site=${SITE:-/tmp/hiera_det_site}
"$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl \
  ${EXTRA_WHEELS:+"$EXTRA_WHEELS"/*.whl} || { echo "ddp_run.sh: installing the wheels failed" >&2; exit 2; }
export PYTHONPATH="$site:$wheels/d2:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
  >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi unavailable" >"$out/nvidia-smi.txt"
data=${DATA:-/tmp/coco_like}
{
  echo "== data"
  [ -f "$data/specs.json" ] || "$python" -m benchmarks.coco_like --root "$data" --num-train "${NUM_TRAIN:-384}" \
    --num-val "${NUM_VAL:-64}" --videos "${NUM_VIDEOS:-48}" || exit 3
  echo "== ddp ($(( $(date +%s) - start )) s)"
  timeout --signal=INT --kill-after=20 $(( budget + 90 )) "$python" -m benchmarks.ddp --data "$data" \
    --gpus "$gpus" --out "$out" --tag "$tag" --time-budget $(( budget - ($(date +%s) - start) )) "$@"
  left=$(( budget + 30 - ($(date +%s) - start) ))
  if [ "${PROFILE_LOADER:-1}" = 0 ]; then
    echo "== loader profile not asked for"
  elif [ "$left" -gt 45 ]; then
    echo "== loader profile (${left} s left)"
    timeout --signal=INT "$left" "$python" -m benchmarks.loader_profile --data "$data" \
      --out "$out/loader_profile.json" --images 6 --repeats 2 --workers 4,8 --batches 8
  else
    echo "== loader profile skipped: ${left} s left"
  fi
  echo "== done after $(( $(date +%s) - start )) s"
} 2>&1 | tee "$out/ddp_run.log"
ls -l "$out"
