#!/usr/bin/env bash
# ReST on a Cloud TPU VM slice: create (or reuse) the slice, install rest_jax on every
# worker, run one rest_jax command on all workers at once, stream the logs.
#
#   launch/tpu_pod.sh --tpu=rest-v4-32 --zone=us-central2-b --accelerator=v4-32 \
#       [--project=P] [--version=tpu-ubuntu2204-base] [--spot] [--reuse_only] \
#       [--log=runs/tpu.log] [--dry-run] \
#       -- rest --gin_file=configs/wmt_en_de.gin --gin.MODEL_DIR="'/mnt/shared/rest/wmt'"
#
# Every worker runs `python -m rest_jax.main ... --multihost`; on Cloud TPU,
# jax.distributed finds the coordinator and the worker's index by itself. MODEL_DIR
# must be one directory every worker sees: a Filestore (NFS) or gcsfuse mount; the
# grown-dataset writer uses POSIX renames, so a bare gs:// path is not supported.
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

tpu=""; zone=""; accelerator=""; project=""; version="tpu-ubuntu2204-base"
spot=0; reuse_only=0; dry_run=0; log=""
source_dir="$(cd "$(dirname "$0")/.." && pwd)"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --log=*) log="${1#*=}" ;;
    --spot) spot=1 ;;
    --reuse_only) reuse_only=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (rest_jax arguments go after --)" >&2; usage 2 ;;
  esac
  shift
done
[[ -n "$tpu" && -n "$zone" ]] || { echo "tpu_pod.sh: --tpu and --zone are required" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "tpu_pod.sh: no rest_jax command given after --" >&2; exit 2; }

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

run() {  # print in a dry run, execute otherwise
  if [[ "$dry_run" == 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

# 1. The slice: reuse it if it exists, else create it.
if [[ "$dry_run" == 1 ]]; then
  echo "# if '${gcloud_tpu[*]} describe $tpu' fails:"
  exists=0
else
  exists=1
  "${gcloud_tpu[@]}" describe "$tpu" "${where[@]}" > /dev/null 2>&1 || exists=0
fi
if [[ "$exists" == 0 ]]; then
  if [[ "$reuse_only" == 1 ]]; then
    echo "tpu_pod.sh: TPU $tpu does not exist in $zone and --reuse_only was given" >&2
    [[ "$dry_run" == 1 ]] || exit 1
  fi
  [[ -n "$accelerator" ]] || { echo "tpu_pod.sh: creating $tpu needs --accelerator" >&2; exit 2; }
  create=("${gcloud_tpu[@]}" create "$tpu" "${where[@]}" --accelerator-type="$accelerator"
          --version="$version")
  [[ "$spot" == 1 ]] && create+=(--spot)
  run "${create[@]}"
fi

# 2. The package on every worker: this checkout, copied as a tarball.
tarball="${TMPDIR:-/tmp}/rest_jax_src.tar.gz"
run tar -C "$source_dir" --exclude=.venv --exclude=.git --exclude=runs -czf "$tarball" .
run "${gcloud_tpu[@]}" scp "$tarball" "$tpu:rest_jax_src.tar.gz" "${where[@]}" --worker=all
run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command \
  "mkdir -p rest_jax && tar -C rest_jax -xzf rest_jax_src.tar.gz && pip install -q -e 'rest_jax[tpu]'"

# 3. One command on all workers; every worker's output comes back here.
printf -v command ' %q' "$@" --multihost
remote="cd rest_jax && TF_CPP_MIN_LOG_LEVEL=3 python3 -m rest_jax.main$command"
if [[ -n "$log" ]]; then
  if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "$remote"
    printf '2>&1 | tee %q\n' "$log"
  else
    mkdir -p "$(dirname "$log")"
    "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "$remote" 2>&1 | tee "$log"
  fi
else
  run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "$remote"
fi
