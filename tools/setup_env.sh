#!/usr/bin/env bash
# Create or update adet's virtual environment; idempotent and cheap when up to date.
#
#   tools/setup_env.sh [VENV]        (default: $VENV, else .venv in the repo root)
#
# Steps (each one a no-op when already satisfied):
#   1. python3 -m venv VENV                       (when VENV has no working python)
#   2. torch + torchvision: $TORCH_SPEC when set; else kept when VENV already has torch;
#      else torch==2.14.1 torchvision==0.29.1
#   3. pip install -r requirements.txt            (pinned; build tools, deps, pytest)
#   4. Detectron2 via tools/install_detectron2.sh (keeps an installed upstream one)
#   5. pip install --no-build-isolation -e .      (builds the optional adet._C)
# and then writes VENV/.adet-installed with a fingerprint of requirements.txt, setup.py,
# these scripts, the csrc sources and the settings below, so that the next call returns
# at once unless one of them changed.
#
# Environment:
#   PYTHON            interpreter that creates the venv (default python3; >= 3.9)
#   TORCH_SPEC        pip requirement(s) for torch, e.g. "torch==2.5.1 torchvision==0.20.1"
#   TORCH_PIP_ARGS    extra pip arguments for that step, e.g. "--index-url URL"
#   ADET_FORCE_SETUP  1: run every step even when the stamp is current
#   ADET_NO_EXT, ADET_EXT_REQUIRED, FORCE_CUDA: passed to setup.py (see there)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

VENV=${1:-${VENV:-.venv}}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PYTHON=${PYTHON:-python3}
DEFAULT_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
STAMP="$VENV/.adet-installed"
VPY="$VENV/bin/python"

log() { echo "[setup_env] $*" >&2; }

fingerprint() {
    {
        sha256sum requirements.txt setup.py pyproject.toml tools/setup_env.sh tools/install_detectron2.sh
        # compiled sources: names and contents (a new kernel file rebuilds adet._C)
        find adet/layers/csrc -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) \
            -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r sha256sum
        echo "TORCH_SPEC=${TORCH_SPEC:-} TORCH_PIP_ARGS=${TORCH_PIP_ARGS:-}"
        echo "ADET_NO_EXT=${ADET_NO_EXT:-} FORCE_CUDA=${FORCE_CUDA:-}"
    } | sha256sum | cut -d' ' -f1
}

up_to_date() {
    [ "${ADET_FORCE_SETUP:-0}" != 1 ] && [ -x "$VPY" ] && [ -f "$STAMP" ] \
        && [ "$(cat "$STAMP")" = "$1" ]
}

FP=$(fingerprint)
if up_to_date "$FP"; then
    exit 0
fi

# One setup at a time per venv (e.g. `make -j test train`); wait for the other one.
LOCK="${TMPDIR:-/tmp}/adet-setup-$(echo "$VENV" | sha256sum | cut -c1-16).lock"
exec 9>"$LOCK"
if command -v flock >/dev/null; then
    flock 9
fi
if up_to_date "$FP"; then  # done by whoever held the lock
    exit 0
fi

t_all=$SECONDS
step() { log "[$(( SECONDS - t_all ))s] $*"; }

# 1. the venv
if ! { [ -x "$VPY" ] && "$VPY" -c 'import sys' 2>/dev/null; }; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), "adet needs Python >= 3.9"' \
        || { log "$PYTHON is missing or older than 3.9; set PYTHON=..."; exit 1; }
    step "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
else
    step "updating $VENV ($("$VPY" --version 2>&1))"
fi
rm -f "$STAMP"
export PIP_PROGRESS_BAR=off PIP_DISABLE_PIP_VERSION_CHECK=1
# pip, minus the "Location ... is ignored" lines that local find-links/indexes cause
pip_() {
    "$VPY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# 2. torch (first: some pinned packages depend on torch, and must not pull another one)
if [ -n "${TORCH_SPEC:-}" ]; then
    step "pip install $TORCH_SPEC ${TORCH_PIP_ARGS:-}"
    # shellcheck disable=SC2086  # word splitting of the specs and arguments is wanted
    pip_ install -q $TORCH_SPEC ${TORCH_PIP_ARGS:-}
elif "$VPY" -c 'import torch, torchvision' 2>/dev/null; then
    step "keeping torch $("$VPY" -c 'import torch; print(torch.__version__)') (set TORCH_SPEC to change it)"
else
    step "pip install $DEFAULT_TORCH_SPEC ${TORCH_PIP_ARGS:-}"
    # shellcheck disable=SC2086
    pip_ install -q $DEFAULT_TORCH_SPEC ${TORCH_PIP_ARGS:-}
fi

# 3. pinned dependencies
step "pip install -r requirements.txt"
pip_ install -q -r requirements.txt

# 4. Detectron2
step "Detectron2"
PYTHON="$VPY" bash tools/install_detectron2.sh 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# 5. adet, editable, with the optional extension
step "pip install --no-build-isolation -e ."
pip_ install -q --no-build-isolation -e .

# check, from outside the repo so that the installed packages are what imports
step "checking imports"
(cd / && "$VPY" -W ignore -c '
import torch, torchvision, detectron2.config, adet
from adet.layers._ext import load_ext
ext = load_ext()
print("[setup_env] adet._C:", "not built (pure-PyTorch ops)" if ext is None else
      "built, %s, ops: %s" % ("CUDA" if ext.compiled_with_cuda() else "CPU only", ext.available_ops() or "none"))
')
pip_ check || log "WARNING: pip check reports conflicts (see above)"

echo "$FP" >"$STAMP"
step "done: $VENV is ready ($(( SECONDS - t_all ))s)"
