#!/bin/bash
# ELECTRA-Large pre-training on many GPU nodes:  sbatch slurm/pretrain_large.sh
#
# Defaults: 8 nodes × 8 GPUs, ZeRO-2, bf16, configs/electra_large.yaml, configs/zero2.json.
# Every knob is an environment variable (sbatch passes your environment on) or an sbatch flag:
#   sbatch --nodes=16 --time=72:00:00 slurm/pretrain_large.sh      # sbatch flags beat the lines below
#   CONFIG=configs/electra_large.yaml   model/optimizer/batch config (YAML or flavor name)
#   DS_CONFIG=configs/zero2.json        DeepSpeed JSON ("auto" values come from CONFIG)
#   DATA=data/shards                    shards: directory with manifest.json, glob, brace list or URL
#   TOKENIZER=data/tokenizer            tokenizer directory (must be the one the shards were built with)
#   OUTPUT_DIR=runs/electra-large       checkpoints, metrics.jsonl, final model; a requeued job resumes here
#   EXTRA_ARGS="train.max_steps=1000 tracking.experiment=large"   dotted config overrides (no spaces inside)
#   NPROC_PER_NODE=8                    processes per node (default: the GPUs SLURM gives each node)
#   REPO=$SLURM_SUBMIT_DIR              the checkout on the host (submit from it, or set this)
#   CONTAINER_IMAGE=/shared/e.sqsh      run the job steps in this image (see slurm/container.sh)
#   CONTAINER_RUNTIME=pyxis             pyxis (srun --container-image) or apptainer/singularity
#   CONTAINER_MOUNTS=/shared/runs:/runs,...   added to the checkout (always mounted at its own path);
#                                       OUTPUT_DIR etc. are then container paths, OUTPUT_DIR on a mount
#   CONTAINER_WORKDIR=/opt/electra_dist the image's code (default: the checkout, your working copy)
#   VENV=/path/to/venv  PYTHON=python3  environment to activate / interpreter to use
#   MLFLOW_TRACKING_URI=http://...      your team's tracking server (default: ./mlflow.db)
#   NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_DEBUG, ...   passed through to NCCL
#
# Launch: one torchrun agent per node (c10d rendezvous at the first node, free port from the job
# id). Pre-emption and time limits: SLURM sends USR1 300 s before the end (--signal) or on
# `scancel --signal=USR1`; training checkpoints and exits, the job requeues itself (--requeue) and
# resumes from the latest complete checkpoint. Logs: <job-name>-<job-id>.out in the submit dir,
# appended across requeues.
#
#SBATCH --job-name=electra-large
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

CONFIG=${CONFIG:-configs/electra_large.yaml}
DS_CONFIG=${DS_CONFIG:-configs/zero2.json}
DATA=${DATA:-data/shards}
TOKENIZER=${TOKENIZER:-data/tokenizer}
OUTPUT_DIR=${OUTPUT_DIR:-runs/electra-large}
source "${REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh" || exit 1

train_and_requeue
