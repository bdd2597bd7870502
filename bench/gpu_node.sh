#!/usr/bin/env bash
# gpu_node.sh — the GPU acceptance run on a bare node that has only this checkout, a Python with
# PyTorch + CUDA (an NGC image, a cluster module) and the project's distributed stack as wheels; no
# package registry needed.
#
#   bash bench/gpu_node.sh                                   # wheels from ./.gpu-wheels (ignored by git), report in ./gpu-report
#   bash bench/gpu_node.sh --wheels /path/to/wheels --out /scratch/report --budget 300
#   bash bench/gpu_node.sh --sections throughput,profile     # any other option goes to gpu-check
#
# 1. installs the wheels (*.whl: deepspeed, megatron-core, webdataset, ... — no torch) into a fresh
#    temp dir, beside the node's own torch, never into its environment;
# 2. sets CUDA_HOME from the REAL nvcc (a wrapper script on PATH outside the CUDA tree makes torch
#    guess it wrong, and just-in-time CUDA builds then fail) unless CUDA_HOME is already a toolkit;
# 3. runs `python -m electra_dist gpu-check --out DIR` from the checkout, which writes
#    DIR/report.{md,json} after every section.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=$REPO/.gpu-wheels
OUT=gpu-report
PY=${PYTHON:-python3}
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=$2; shift 2;;
        --out) OUT=$2; shift 2;;
        -h|--help) sed -n '2,16p' "$0"; exit 0;;
        *) args+=("$1"); shift;;
    esac
done
say() { echo "gpu_node.sh: $*"; }
OUT=$(realpath -m "$OUT")  # the check runs from the checkout: a relative --out stays relative to here

SITE=$(mktemp -d "${TMPDIR:-/tmp}/electra-dist-site.XXXXXX")
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$SITE" "${wheels[@]}"
    say "installed ${#wheels[@]} wheel(s) from $WHEELS into $SITE"
else
    say "no wheels in $WHEELS: using what $PY already has"
fi
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}

is_toolkit() { [ -n "$1" ] && [ -x "$1/bin/nvcc" ]; }
if is_toolkit "${CUDA_HOME:-}"; then
    say "CUDA_HOME=$CUDA_HOME (as set)"
elif command -v nvcc >/dev/null; then
    # nvcc reports where it really lives (TOP) even when PATH's nvcc is a wrapper elsewhere
    top=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1 || true)
    home=""
    if [ -n "$top" ] && is_toolkit "$(cd "$top" 2>/dev/null && pwd -P)"; then home=$(cd "$top" && pwd -P)
    elif is_toolkit "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"; then
        home=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
    if [ -n "$home" ]; then export CUDA_HOME=$home; say "CUDA_HOME=$CUDA_HOME (from nvcc)"
    else say "nvcc on PATH does not say where its toolkit is: CUDA_HOME unset (nothing here needs a CUDA build)"; fi
else
    say "no nvcc: CUDA_HOME unset (nothing here needs a CUDA build; optim.implementation=deepspeed would)"
fi

"$PY" -c 'import sys, torch; print(f"gpu_node.sh: Python {sys.version.split()[0]}, torch {torch.__version__}, "
                                  f"CUDA {torch.version.cuda}, devices {torch.cuda.device_count()}")'
cd "$REPO"
exec "$PY" -m electra_dist gpu-check --out "$OUT" "${args[@]}"
