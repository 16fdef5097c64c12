#!/usr/bin/env bash
# Creates, once per machine and lock file, the virtual environment that every hiera_det command runs in,
# and prints its path. Every clone with the same requirements/lock.txt shares it; a second run installs
# nothing. Set HIERA_DET_VENV to put it elsewhere, HIERA_DET_PYTHON to build it from another interpreter.
#
# An already-installed detectron2 (importable from the base interpreter) is respected: the environment
# then sees the base interpreter's packages and installs detectron2 from nothing. Otherwise detectron2
# comes from the sal-detectron2 0.7.2 redistribution, whose Python part works on 3.10+ (its compiled _C,
# built for 3.10 / CUDA 12, is left out: rotated boxes and deformable conv need it, Hiera does not).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lock="$root/requirements/lock.txt"
python=${HIERA_DET_PYTHON:-$(command -v python3.11 || command -v python3)}
key=$(cat "$lock" "$root/requirements/requirements.txt" "$root/scripts/env.sh" | sha256sum | cut -c1-12)
venv=${HIERA_DET_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hiera_det/venv-$key}
log() { echo "[hiera_det env] $*" >&2; }

if [ -f "$venv/.complete" ]; then echo "$venv"; exit 0; fi
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # two clones setting up at once: the second waits and then reuses
if [ -f "$venv/.complete" ]; then echo "$venv"; exit 0; fi

rm -rf "$venv"
base_has_d2=0
if "$python" -c "import detectron2" >/dev/null 2>&1; then base_has_d2=1; fi
log "building $venv from $("$python" --version 2>&1) (takes a few minutes once)"
if [ $base_has_d2 = 1 ]; then
  log "detectron2 is already installed for $python: using it, with that interpreter's packages visible"
  "$python" -m venv --system-site-packages "$venv"
else
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade "pip==25.3" >&2
if [ $base_has_d2 = 1 ]; then
  # keep the torch that the installed detectron2 was built against
  grep -vE '^(torch|torchvision)==' "$root/requirements/requirements.txt" > "$venv/requirements.txt"
  grep -vE '^(torch|torchvision|nvidia-|triton|cuda-)' "$lock" > "$venv/lock.txt"
  "${pip[@]}" install -c "$venv/lock.txt" -r "$venv/requirements.txt" >&2
else
  "${pip[@]}" install -c "$lock" -r "$root/requirements/requirements.txt" >&2
  tmp=$(mktemp -d)
  "${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" sal-detectron2==0.7.2 >&2
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$venv/bin/python" - "$tmp" "$site" <<'PY'
import glob, sys, zipfile
src, site = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(f"{src}/sal_detectron2-*.whl")[0]) as z:
    for name in z.namelist():
        if (name.startswith("detectron2/") or name.startswith("tools/")) and not name.endswith(".so"):
            if name.startswith("detectron2/"):
                z.extract(name, site)
PY
  rm -rf "$tmp"
fi
# sam2 ships only as a source package; build it against the torch above, without its CUDA extension
SAM2_BUILD_CUDA=0 "${pip[@]}" install --no-build-isolation --no-deps -c "$lock" sam2==1.1.0 >&2
"$venv/bin/python" -c "import torch, torchvision, detectron2, sam2, hiera, timm, transformers, decord" >&2
touch "$venv/.complete"
log "ready"
echo "$venv"
