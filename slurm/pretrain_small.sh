#!/bin/bash
# ELECTRA-Small on one GPU (the paper's "4 days on one GPU" model):  sbatch slurm/pretrain_small.sh
#
# The same knobs as slurm/pretrain_large.sh (CONFIG, DS_CONFIG, DATA, TOKENIZER, OUTPUT_DIR,
# EXTRA_ARGS, CONTAINER_IMAGE, VENV, ...); defaults: configs/electra_small.yaml, ZeRO-0, seq 128.
# Pre-emption: USR1 → checkpoint → requeue → resume, as for Large.
#
#SBATCH --job-name=electra-small
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

CONFIG=${CONFIG:-configs/electra_small.yaml}
DS_CONFIG=${DS_CONFIG:-configs/zero0.json}
DATA=${DATA:-data/shards-128}
TOKENIZER=${TOKENIZER:-data/tokenizer}
OUTPUT_DIR=${OUTPUT_DIR:-runs/electra-small}
source "${REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh" || exit 1

train_and_requeue
