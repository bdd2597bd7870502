# slurm/common.sh — sourced by slurm/pretrain_*.sh: environment, rendezvous, launch and requeue.
#
# One torchrun agent per node (srun --ntasks-per-node=1), c10d rendezvous at the first node of
# the allocation on a free port derived from the job id (never 29500). slurmstepd signals EVERY
# process of a step (USR1 from --signal=USR1@300; TERM on scancel, the time limit and pre-emption):
# the agent ignores USR1 and TERM (torchrun would otherwise kill the ranks 30 s into their
# checkpoint), the ranks' loader workers ignore them, and the ranks catch them, checkpoint, write
# OUTPUT_DIR/PREEMPTED and exit 0; `requeue_if_preempted` then requeues the job, which resumes from
# the latest complete checkpoint. A rank whose agent dies (kill -9) gets SIGTERM from the kernel and
# stops the same way. (A TERM to the batch step itself — scancel --full — makes srun SIGKILL its step:
# srun's own rule; send pre-emption notices to the steps, as --signal=USR1@300 and scancel --signal do.)

set -uo pipefail
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}  # the checkout on the host (shared storage): where these scripts are
cd "$REPO" || exit 1
if [ -n "${VENV:-}" ]; then . "$VENV/bin/activate"; fi
PYTHON=${PYTHON:-python3}
. "$REPO/slurm/container.sh"
export PYTHONPATH="$CONTAINER_WORKDIR${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1
# NCCL: sensible defaults, every one overridable from the environment
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# e.g. NCCL_SOCKET_IFNAME=ib0 NCCL_IB_HCA=mlx5 NCCL_IB_GID_INDEX=3: exported as you set them

# TERM to this shell (scancel --batch): wait for the step to stop, then requeue
trap 'log "got SIGTERM: waiting for the ranks to checkpoint"' TERM

log() { echo "[$(date +%T) ${SLURM_JOB_NAME:-job}-${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}] $*"; }

# MASTER_ADDR: first node of the allocation. MASTER_PORT: the first free port from 20000 + job id
# % 10000, checked HERE, on the batch host, which is that first node.
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)}
MASTER_PORT=${MASTER_PORT:-$("$PYTHON" - "$SLURM_JOB_ID" <<'PY'
import socket, sys
base = 20000 + int(sys.argv[1]) % 10000
for port in range(base, base + 200):
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            continue
        print(port)
        break
PY
)}
export MASTER_ADDR MASTER_PORT
NNODES=${SLURM_NNODES:-1}
gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
NPROC_PER_NODE=${NPROC_PER_NODE:-${gpus##*:}}
[ "${NPROC_PER_NODE:-0}" -gt 0 ] 2>/dev/null || NPROC_PER_NODE=1  # no GPUs asked for (a CPU node): one process

launch() {  # launch TRAIN_ARGS... : train.py on every node under torchrun, inside srun
    local cmd=("$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE"
               --rdzv_id="${SLURM_JOB_ID}" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT"
               --max_restarts=0 electra_dist/train.py "$@")
    log "nodes $SLURM_JOB_NODELIST ($NNODES × $NPROC_PER_NODE processes), rendezvous $MASTER_ADDR:$MASTER_PORT"
    if [ -n "${CONTAINER_IMAGE:-}" ]; then
        log "in container $CONTAINER_IMAGE (${CONTAINER_RUNTIME:-pyxis}), code $CONTAINER_WORKDIR, mounts $(container_mounts)"
    fi
    log "train.py $*"
    # the agent leaves TERM to the ranks (PET_SIGNALS_TO_HANDLE is torchrun's --signals-to-handle)
    export PET_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT
    container_step --ntasks-per-node=1 --kill-on-bad-exit=1 -- bash -c 'trap "" USR1 TERM; exec "$@"' _ "${cmd[@]}"
}

train_and_requeue() {  # train.py with CONFIG, DS_CONFIG, DATA, TOKENIZER, OUTPUT_DIR, EXTRA_ARGS
    require_on_host OUTPUT_DIR "$OUTPUT_DIR"
    # shellcheck disable=SC2086  # EXTRA_ARGS is a list of KEY=VALUE words
    launch --deepspeed "$DS_CONFIG" --config "$CONFIG" --data "$DATA" --tokenizer "$TOKENIZER" \
        --output-dir "$OUTPUT_DIR" --resume auto ${EXTRA_ARGS:-}
    requeue_if_preempted "$OUTPUT_DIR" $?
}

requeue_if_preempted() {  # requeue_if_preempted OUTPUT_DIR RC  (OUTPUT_DIR as the container sees it)
    local marker
    marker="$(host_path "$1")/PREEMPTED"
    if [ -f "$marker" ]; then
        log "pre-empted at $(cat "$marker"); requeueing"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    log "training exited with $2"
    exit "$2"
}
