#!/usr/bin/env bash
# try_cpu.sh — the real batch scripts on a machine without GPUs, through a local SLURM
# (bash slurm/local/start_slurm.sh first; root, Debian/Ubuntu; its cluster is found through SLURM_CONF,
# by default the one start_slurm.sh wrote under SLURM_CI_DIR):
#
#   electra-dist quickstart                     # ./quickstart/{tokenizer,shards}: small real data
#   bash slurm/local/try_cpu.sh                 # sbatch slurm/pretrain_small.sh, 20 debug steps on CPU
#   bash slurm/local/try_cpu.sh pretrain_large.sh --nodes=1
#
# What a CPU node needs and the scripts' GPU defaults do not give: no GPUs asked for (--gpus-per-node=0;
# the scripts ask for GPUs), 2 CPUs a task (the scripts ask for 8-16), the debug flavor in fp32, and the
# Python you run this from (sbatch passes your environment on, venv included). Every variable of the
# batch scripts (CONFIG, DATA, TOKENIZER, OUTPUT_DIR, EXTRA_ARGS, ...) can still be set; extra
# arguments go to sbatch. Waits for the job and prints its log.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
script=pretrain_small.sh
if [ $# -gt 0 ] && [[ "$1" == *.sh ]]; then script=$1; shift; fi
export REPO PYTHON=${PYTHON:-$(command -v python3)}
if [ -z "${SLURM_CONF:-}" ] && [ -f "${SLURM_CI_DIR:-/tmp/electra-ci/slurm}/etc/slurm.conf" ]; then
    export SLURM_CONF=${SLURM_CI_DIR:-/tmp/electra-ci/slurm}/etc/slurm.conf
fi
export CONFIG=${CONFIG:-debug} DS_CONFIG=${DS_CONFIG:-$REPO/configs/zero0.json}
export DATA=${DATA:-$PWD/quickstart/shards} TOKENIZER=${TOKENIZER:-$PWD/quickstart/tokenizer}
export OUTPUT_DIR=${OUTPUT_DIR:-$PWD/runs/try-cpu}
export EXTRA_ARGS=${EXTRA_ARGS:-"train.max_steps=20 train.precision=fp32 data.num_workers=1"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
for d in "$DATA" "$TOKENIZER"; do
    [ -e "$d" ] || { echo "try_cpu.sh: $d does not exist: run \`electra-dist quickstart\` first (or set DATA/TOKENIZER)" >&2; exit 2; }
done
job=$(sbatch --parsable --wait --gpus-per-node=0 --cpus-per-task=2 --time=00:30:00 "$@" "$REPO/slurm/$script") && rc=0 || rc=$?
job=${job%%;*}
name=$(sed -n 's/^#SBATCH --job-name=//p' "$REPO/slurm/$script")
cat "$name-$job.out" 2>/dev/null || true
echo "try_cpu.sh: job $job ($script) exited $rc; output in $OUTPUT_DIR"
exit "$rc"
