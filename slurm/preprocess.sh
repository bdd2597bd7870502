#!/bin/bash
# Tokenizer and shards as SLURM jobs; the shard build is a job array (one part per task):
#
#   tok=$(sbatch --parsable slurm/preprocess.sh tokenizer)
#   shards=$(sbatch --parsable --dependency=afterok:$tok --array=0-15 slurm/preprocess.sh shards)
#   merge=$(sbatch --parsable --dependency=afterok:$shards slurm/preprocess.sh merge)
#   sbatch --dependency=afterok:$merge slurm/pretrain_large.sh
#
# Knobs (environment): INPUT="corpus/*.jsonl.gz" (globs and directories, space separated),
# TOKENIZER=data/tokenizer, DATA=data/shards, VOCAB_SIZE=30522, SEQ_LEN=512, LOWERCASE=1,
# MODEL_TYPE=unigram, SAMPLES_PER_SHARD=10000, SEED=0, CHUNK_MB=1, PACKING=full (or official), EVAL_FRACTION=0.01,
# WORKERS (default: the task's CPUs),
# VENV, PYTHON, REPO (the checkout; default the submit dir), CONTAINER_IMAGE / CONTAINER_RUNTIME /
# CONTAINER_MOUNTS / CONTAINER_WORKDIR (see slurm/container.sh; paths are then the container's). The parts of an array build hold exactly the sequences a single-process build
# would (each chunk of documents is packed with its own seed), in shard-PART-INDEX.tar files.
#
#SBATCH --job-name=electra-preprocess
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out

set -uo pipefail
STAGE=${1:?usage: preprocess.sh tokenizer|shards|merge}
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}  # the checkout on the host
cd "$REPO" || exit 1
if [ -n "${VENV:-}" ]; then . "$VENV/bin/activate"; fi
PYTHON=${PYTHON:-python3}
. "$REPO/slurm/container.sh"  # CONTAINER_IMAGE, CONTAINER_RUNTIME, CONTAINER_MOUNTS, CONTAINER_WORKDIR
export PYTHONPATH="$CONTAINER_WORKDIR${PYTHONPATH:+:$PYTHONPATH}"
INPUT=${INPUT:?set INPUT to the raw text files (globs allowed)}
TOKENIZER=${TOKENIZER:-data/tokenizer}
DATA=${DATA:-data/shards}
WORKERS=${WORKERS:-${SLURM_CPUS_PER_TASK:-1}}
cli() {  # in the container (as a job step) when CONTAINER_IMAGE is set
    if [ -n "${CONTAINER_IMAGE:-}" ]; then container_step --ntasks=1 -- "$PYTHON" -m electra_dist "$@"
    else "$PYTHON" -m electra_dist "$@"; fi
}

case "$STAGE" in
  tokenizer)
    # shellcheck disable=SC2086  # INPUT is a list of globs
    cli tokenizer train --input $INPUT --vocab-size "${VOCAB_SIZE:-30522}" --out "$TOKENIZER" \
        --model-type "${MODEL_TYPE:-unigram}" --seed "${SEED:-0}" $([ "${LOWERCASE:-1}" = 1 ] && echo --lowercase) ;;
  shards)
    part=$(( ${SLURM_ARRAY_TASK_ID:-0} - ${SLURM_ARRAY_TASK_MIN:-0} ))
    parts=${SLURM_ARRAY_TASK_COUNT:-1}
    # shellcheck disable=SC2086
    cli shards build --input $INPUT --tokenizer "$TOKENIZER" --seq-len "${SEQ_LEN:-512}" --out "$DATA" \
        --samples-per-shard "${SAMPLES_PER_SHARD:-10000}" --workers "$WORKERS" --seed "${SEED:-0}" \
        --chunk-mb "${CHUNK_MB:-1}" --packing "${PACKING:-full}" --eval-fraction "${EVAL_FRACTION:-0.01}" \
        --part "$part" --num-parts "$parts" --overwrite --quiet ;;
  merge)
    if ls "$(host_path "$DATA")"/manifest.part-*.json >/dev/null 2>&1; then cli shards merge "$DATA"
    else echo "no parts to merge in $DATA (a single-part build writes manifest.json itself)"; fi ;;
  *) echo "unknown stage $STAGE: tokenizer|shards|merge" >&2; exit 2 ;;
esac
