#!/usr/bin/env bash
# One prepared GPU check (at most 8 minutes on one H100-class GPU): which device it ran on,
# ddpmpp_cifar10 train-step throughput and utilisation in bf16 and fp32 at batch 128 and 512,
# sampler throughput, Inception / DINOv2 (S, g) feature throughput, and the sharded train path
# (jit over a one-GPU mesh, and pmap) on that GPU, and, when torch has CUDA, the PyTorch peer of
# the U-Net step beside ours (benchmarks/peer_torch.py). Figures go to stdout and
# benchmarks/results/.
#
#   benchmarks/gpu_check.sh                      # JAX with CUDA installed; other packages from PyPI if missing
#   benchmarks/gpu_check.sh WHEELHOUSE           # ... or from a folder of wheels (offline machines)
#   benchmarks/gpu_check.sh --make-wheelhouse DIR   # on a connected machine: fill DIR for the line above
#
# It needs nothing installed beyond JAX: the project runs from this checkout (PYTHONPATH), and
# its pure-Python dependencies (flax, optax, orbax-checkpoint, ml-collections, absl-py, etils)
# are installed only when they are missing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEPS=(flax optax orbax-checkpoint ml-collections absl-py "etils[epath]" pillow)

if [ "${1:-}" = "--make-wheelhouse" ]; then
  dir="${2:?give the folder to fill}"
  "$PY" -m pip download -d "$dir" "${DEPS[@]}" && rm -f "$dir"/jax-* "$dir"/jaxlib-* "$dir"/jax_cuda* "$dir"/nvidia_*
  exit $?
fi

if ! "$PY" -c "import flax, optax, orbax.checkpoint, ml_collections, absl, etils, PIL" 2>/dev/null; then
  if [ -n "${1:-}" ]; then
    "$PY" -m pip install -q --no-index --find-links "$1" "${DEPS[@]}"
  else
    "$PY" -m pip install -q "${DEPS[@]}"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

section() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }
section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi not found"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
"$PY" -c "import jax, sys; sys.exit(0 if jax.devices()[0].platform == 'gpu' else 'no GPU visible to JAX: this check is for a GPU machine')" || exit 1

section "train step: ddpmpp_cifar10 32x32, bf16 and fp32, batch 128 and 512"
timeout 170 "$PY" benchmarks/train_step.py --presets=ddpmpp_cifar10 --batches=128,512 --dtypes=bfloat16,float32 --steps=20
section "train step: 4 steps per dispatch (lax.scan), bf16, batch 128"
timeout 50 "$PY" benchmarks/train_step.py --presets=ddpmpp_cifar10 --batches=128 --dtypes=bfloat16 --steps=20 \
  --steps_per_dispatch=4 --out=train_step_scan
section "sampling: EDM Heun 18 and 40 steps, ddpmpp_cifar10, batch 256, bf16"
timeout 60 "$PY" benchmarks/sampling.py --presets=ddpmpp_cifar10 --batch=256 --dtypes=bfloat16
section "evaluation features and nearest-neighbour search"
timeout 70 "$PY" benchmarks/eval_throughput.py --resolutions=32,64 --dinov2=vits14,vitg14 --images=512 --batch=256
section "sharded path on this GPU: jit over a one-device mesh and pmap, tiny U-Net"
timeout 45 "$PY" benchmarks/scaling.py --platform=gpu --preset=tiny --batch=256 --steps=50
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  section "the PyTorch peer of the ddpmpp_cifar10 step beside ours, fp32, batch 128"
  timeout 75 "$PY" benchmarks/peer_torch.py --runs=ddpmpp_cifar10:128 --steps=10
else
  section "the PyTorch peer: skipped (no torch with CUDA here)"
fi
section "done"
