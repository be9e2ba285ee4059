#!/usr/bin/env bash
# N rest_jax processes on this machine, one simulated host each, joined by
# jax.distributed over loopback (CPU collectives: gloo). The multi-host tests run
# ReST this way; it is also the cheapest rehearsal of a pod run.
#
#   launch/local_multiprocess.sh [--dry-run] [-n 2] [--devices 4] [--port 12355] \
#       [--log_dir DIR] -- rest --gin_file=configs/demo.gin --gin.MODEL_DIR="'runs/mh'"
#
# Every process gets REST_JAX_COORDINATOR / REST_JAX_NUM_PROCESSES / REST_JAX_PROCESS_ID
# and `--multihost`; process i logs to DIR/process_i.log (default: the terminal,
# prefixed). If one process fails, the others are stopped and the status is nonzero.
set -euo pipefail

dry_run=0
num_processes=2
devices=1
port=""
log_dir=""
python="${PYTHON:-python}"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    -n|--num_processes) num_processes="$2"; shift ;;
    --devices) devices="$2"; shift ;;
    --port) port="$2"; shift ;;
    --log_dir) log_dir="$2"; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "local_multiprocess.sh: unknown option $1 (rest_jax arguments go after --)" >&2
       usage 2 ;;
  esac
  shift
done
if [[ $# -eq 0 ]]; then
  echo "local_multiprocess.sh: no rest_jax command given after --" >&2
  usage 2
fi
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: -n and --devices must be positive integers" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

env_for() {
  echo "JAX_PLATFORMS=cpu" \
       "XLA_FLAGS=--xla_force_host_platform_device_count=$devices" \
       "REST_JAX_COORDINATOR=127.0.0.1:$port" \
       "REST_JAX_NUM_PROCESSES=$num_processes" \
       "REST_JAX_PROCESS_ID=$1"
}

if [[ "$dry_run" == 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    printf '%s %s -m rest_jax.main' "$(env_for "$i")" "$python"
    printf ' %q' "$@" --multihost
    [[ -n "$log_dir" ]] && printf ' > %q 2>&1' "$log_dir/process_$i.log"
    printf ' &\n'
  done
  echo "wait"
  exit 0
fi

[[ -n "$log_dir" ]] && mkdir -p "$log_dir"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < num_processes; i++)); do
  # shellcheck disable=SC2046
  if [[ -n "$log_dir" ]]; then
    env $(env_for "$i") "$python" -m rest_jax.main "$@" --multihost \
      > "$log_dir/process_$i.log" 2>&1 &
  else
    env $(env_for "$i") "$python" -m rest_jax.main "$@" --multihost 2>&1 \
      | sed -u "s/^/[$i] /" &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then
    status=1
    cleanup
  fi
done
exit "$status"
