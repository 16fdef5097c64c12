#!/usr/bin/env bash
# MAE on the GPU machine in one command: the speed of MAE pre-training against the official hiera_mae
# (benchmarks/mae_speed.py, with the GPU to itself while the proof's data are rendered on the CPU), then the
# proof that MAE helps (benchmarks/mae_proof.py, parallel jobs on the same GPU). Needs the offline wheels
# (../shared/tools/offline-wheels.sh; WHEELS, default .wheels) and writes mae_speed.{json,md},
# mae_proof.{json,md}, mae_proof_logs.tar.gz and nvidia-smi.txt under $OUT (default benchmarks/results).
#
#   WHEELS=../../.whl OUT=/tmp/out BUDGET=480 bash benchmarks/mae_proof.sh [extra mae_proof.py arguments]
#   SPEED=0 BUDGET=180 bash benchmarks/mae_proof.sh --diagnose-video --pretrain-seconds 50   # the video follow-up
#
# BUDGET (seconds) bounds the whole script: mae_proof.py stops what still runs 25 s before it.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-benchmarks/results}
work=${WORK:-/tmp/mae_proof_work}
wheels=${WHEELS:-.wheels}
budget=${BUDGET:-480}
python=${PYTHON:-python3}
mkdir -p "$out" "$work"
site=${SITE:-/tmp/hiera_det_site}
"$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl || {
  echo "mae_proof.sh: installing $wheels/*.whl failed; build them with ../shared/tools/offline-wheels.sh" >&2; exit 2; }
export PYTHONPATH="$site:$PWD/$wheels/d2:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-$work/datasets}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/nvidia-smi.txt" 2>&1

if [ "${SPEED:-1}" = 1 ]; then  # SPEED=0 skips the speed comparison
  "$python" benchmarks/mae_speed.py --out "$out/mae_speed.json" >"$work/mae_speed.log" 2>&1 &
  speed=$!
fi
"$python" benchmarks/mae_proof.py --prepare-only --out "$out" --work "$work" "$@"
if [ "${SPEED:-1}" = 1 ]; then
  wait "$speed"
  echo "mae_speed.py exited with $? after ${SECONDS} s"; tail -n 30 "$work/mae_speed.log"
fi
"$python" benchmarks/mae_proof.py --out "$out" --work "$work" --deadline $((budget - SECONDS - 25)) "$@" \
  2>&1 | tee "$work/mae_proof.log"
status=${PIPESTATUS[0]}
tar -czf "$out/mae_proof_logs.tar.gz" -C "$work" logs mae_proof.log $(cd "$work" && ls mae_speed.log 2>/dev/null) \
  $(cd "$work" && ls runs/*/log.txt 2>/dev/null) 2>/dev/null
echo "total ${SECONDS} s"
exit "$status"
