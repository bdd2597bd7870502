# slurm/container.sh — run a job step's command inside a container; sourced by common.sh and preprocess.sh.
#
# The batch script itself runs on the host (it requeues the job); only the srun steps run inside.
#   CONTAINER_IMAGE     the image (pyxis: a .sqsh file or registry#image; apptainer: a .sif); unset: no container
#   CONTAINER_RUNTIME   pyxis (default: srun --container-image ...) or an apptainer-style CLI (apptainer,
#                       singularity, or a path): srun RUNTIME exec --bind MOUNTS --pwd WORKDIR IMAGE CMD...
#   CONTAINER_MOUNTS    src:dst[,src:dst...], added to the checkout, which is always mounted at its own path
#   CONTAINER_GPU_FLAG  apptainer-style runtimes: how the GPUs get in (default --nv; e.g. --nvccli, or empty)
#   CONTAINER_WORKDIR   the code inside the container: default the checkout ($REPO, your working copy);
#                       /opt/electra_dist for the copy baked into the image
# OUTPUT_DIR, DATA, TOKENIZER are paths as the container sees them; the host finds the PREEMPTED marker
# through the mounts (`host_path`), so the output dir must lie on a mount (or in the checkout).

CONTAINER_WORKDIR=${CONTAINER_WORKDIR:-$REPO}

container_mounts() { echo "$REPO:$REPO${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"; }

container_step() {  # container_step SRUN_OPTION... -- COMMAND...
    local opts=()
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    if [ -z "${CONTAINER_IMAGE:-}" ]; then
        srun "${opts[@]}" "$@"
    elif [ "${CONTAINER_RUNTIME:-pyxis}" = pyxis ]; then
        srun "${opts[@]}" --container-image="$CONTAINER_IMAGE" --container-workdir="$CONTAINER_WORKDIR" \
            --container-mounts="$(container_mounts)" "$@"
    else
        # apptainer/singularity show the container no GPU without --nv (pyxis passes them by itself)
        srun "${opts[@]}" "$CONTAINER_RUNTIME" exec ${CONTAINER_GPU_FLAG---nv} --bind "$(container_mounts)" \
            --pwd "$CONTAINER_WORKDIR" "$CONTAINER_IMAGE" "$@"
    fi
}

host_path() {  # host_path PATH: where PATH, as the container sees it, lies on the host ("" if only inside)
    local p=$1 best="" best_dst="" pair src dst
    if [ -z "${CONTAINER_IMAGE:-}" ]; then echo "$p"; return; fi
    case "$p" in /*) ;; *) p="$CONTAINER_WORKDIR/$p" ;; esac
    IFS=, read -ra pairs <<< "$(container_mounts)"
    for pair in "${pairs[@]}"; do
        src=${pair%%:*}; dst=${pair#*:}; dst=${dst%%:*}  # src:dst[:options]
        case "$p/" in "${dst%/}"/*)
            if [ ${#dst} -gt ${#best_dst} ]; then best_dst=$dst; best="${src%/}${p#"${dst%/}"}"; fi ;;
        esac
    done
    echo "$best"
}

require_on_host() {  # require_on_host NAME PATH: exit 2 unless the host sees PATH (the requeue needs it)
    if [ -n "${CONTAINER_IMAGE:-}" ] && [ -z "$(host_path "$2")" ]; then
        echo "$1=$2 lies only inside the container: no CONTAINER_MOUNTS entry covers it, so the host could not" \
             "see the PREEMPTED marker and would not requeue a pre-empted job; mount its parent" \
             "(CONTAINER_MOUNTS=/shared/runs:${2%/*}) or use a path in the checkout" >&2
        exit 2
    fi
}
