#!/usr/bin/env bash
# Train on all GPUs of one machine: one process, a mesh over every visible GPU (jit mode), the
# global batch split over them. Add --config.parallel.mode=pmap for the classic pmap step.
#
#   launch/multi_gpu.sh runs/cifar10_ambient --config=configs/mnist.py [--config.a.b=v ...]
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/multi_gpu.sh ...     # a subset of the GPUs
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="$1"; shift
venv="${AMBIENT_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -U 'jax[cuda12]' -e .
exec "$venv/bin/ambient-train" "$@" --workdir="$workdir"
