#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: every worker runs the same command; jax.distributed finds the
# other workers by itself, the global batch is split over all chips, and the work dir is a
# bucket path that every worker can reach (checkpoints, config, metrics, samples).
#
#   launch/tpu_pod.sh TPU_NAME ZONE gs://BUCKET/runs/cifar10_ambient [--config=... --config.a.b=v]
#
# Pre-emption: the TPU runtime sends SIGTERM; ambient-train saves a checkpoint at the current step
# and exits. Re-running this script resumes from it.
set -euo pipefail
tpu="$1"; zone="$2"; workdir="$3"; shift 3
config_args="${*:---config=configs/mnist.py}"
cd "$(dirname "$0")/.."
# Copy this checkout (without its virtual environment) to every worker.
git archive --format=tar.gz -o /tmp/ambient-jax.tar.gz HEAD
gcloud compute tpus tpu-vm scp /tmp/ambient-jax.tar.gz "$tpu":ambient-jax.tar.gz --zone="$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command "
  set -e
  mkdir -p ambient-jax && tar -xzf ambient-jax.tar.gz -C ambient-jax
  cd ambient-jax
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -U 'jax[tpu]' -e .
  .venv/bin/ambient-train $config_args --workdir=$workdir
"
