#!/usr/bin/env bash
# Starts one fedcomp run on every worker of a Cloud TPU VM pod slice (multi-host).
#
# Usage:
#   launch/tpu_pod.sh --name=TPU --zone=ZONE [--project=P] [--install] [--dir=DIR]
#                     [--log=FILE] [--dry-run] -- LAUNCH_MAIN_ARGS...
#
#   # Copy this checkout to every worker, install it with jax[tpu], then run:
#   launch/tpu_pod.sh --name=my-v4-32 --zone=us-central2-b --install -- \
#     --config=configs/fedavg.py --workdir=/mnt/runs/fedavg1
#   # Later runs (the code already installed), detached from the ssh session:
#   launch/tpu_pod.sh --name=my-v4-32 --zone=us-central2-b --log=fedavg2.log -- \
#     --config=configs/fedavg.py --workdir=/mnt/runs/fedavg2 --config.total_rounds=500
#
# Options:
#   --name=TPU      the TPU VM (pod slice) name.
#   --zone=ZONE     its zone.
#   --project=P     its project (default: gcloud's configured project).
#   --install       first copy this checkout (without .git, .venv, caches) to DIR on every
#                   worker and `pip install -e DIR jax[tpu]` there.
#   --dir=DIR       the checkout on the workers (default: fedcomp, i.e. ~/fedcomp).
#   --log=FILE      run detached (nohup) and write each worker's output to DIR/FILE on
#                   that worker; without it the output of all workers streams here.
#   --dry-run       print the gcloud commands instead of running them.
#
# Every worker runs the same command, `FEDCOMP_MULTIHOST=1 python3 -m launch.main ARGS`:
# launch/main.py then calls jax.distributed.initialize(), which reads the worker count,
# this worker's index and the coordinator (worker 0) from the TPU metadata server.
# --workdir must be storage every worker sees (checkpoints are written by all workers,
# metrics and JSON files by worker 0): a Filestore/NFS mount or a gcsfuse-mounted bucket,
# mounted at the same path on every worker. A relative --config path is resolved in DIR.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit "${1:-2}"
}

name='' zone='' project='' install=0 dir='fedcomp' log='' dry_run=0
while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --install) install=1 ;;
    --dir=*) dir="${1#*=}" ;;
    --log=*) log="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (options come before --)" >&2; usage >&2 ;;
  esac
  shift
done
if [[ -z "$name" || -z "$zone" || $# -eq 0 ]]; then
  echo 'tpu_pod.sh: --name, --zone and launch.main arguments after -- are required' >&2
  usage >&2
fi

gcloud_flags=(--zone="$zone")
if [[ -n "$project" ]]; then
  gcloud_flags+=(--project="$project")
fi

# Runs a command, or prints it with --dry-run.
run() {
  if ((dry_run)); then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Runs a shell command on every worker of the slice.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all --command="$1"
}

if ((install)); then
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  tarball="$(mktemp --suffix=.tar.gz)"
  trap 'rm -f "$tarball"' EXIT
  tar -C "$root" -czf "$tarball" --exclude=.git --exclude=.venv --exclude=.jax_cache \
    --exclude=__pycache__ --exclude=runs --exclude='*.egg-info' .
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:fedcomp.tar.gz" "${gcloud_flags[@]}" \
    --worker=all
  on_all_workers "mkdir -p $(printf '%q' "$dir") && tar -xzf fedcomp.tar.gz -C $(printf '%q' "$dir") \
&& rm fedcomp.tar.gz && python3 -m pip install -q -U -e $(printf '%q' "$dir") 'jax[tpu]>=0.10.2'"
fi

# The command every worker runs, its arguments quoted for the remote shell.
args="$(printf '%q ' "$@")"
main="cd $(printf '%q' "$dir") && FEDCOMP_MULTIHOST=1 python3 -m launch.main $args"
if [[ -n "$log" ]]; then
  main="cd $(printf '%q' "$dir") && FEDCOMP_MULTIHOST=1 nohup python3 -m launch.main $args \
> $(printf '%q' "$log") 2>&1 < /dev/null &"
fi
on_all_workers "$main"
