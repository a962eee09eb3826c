#!/usr/bin/env bash
# One prepared GPU check: at most 9 minutes on one H100-class GPU, compilation included. Every
# section has its own cap and prints its figures as it ends, so a cut run still reports; the
# expensive compiles come first, and compiled programs go to a persistent cache, so a rerun skips
# them. Sections: the device and its matmul rate; the ddpmpp_cifar10 train step in bf16 and fp32
# at batch 128 and 512 (img/s, utilisation of the measured matmul rate from the FLOPs of the
# lowered program, peak memory, compile seconds); the PyTorch peer of that step on the same GPU
# beside ours (benchmarks/peer_torch.py: the same network and weights, channels-last, bf16
# autocast, torch.compile where it works; when torch has CUDA); the sharded path on this GPU (jit
# over a one-device mesh, and pmap); the Heun sampler; Inception and DINOv2 feature throughput.
# Figures go to stdout and benchmarks/results/ ($AMBIENT_RESULTS_DIR if set).
#
#   benchmarks/gpu_check.sh                      # JAX with CUDA installed; other packages from PyPI if missing
#   benchmarks/gpu_check.sh WHEELHOUSE           # ... or from a folder of wheels (offline machines)
#   benchmarks/gpu_check.sh --make-wheelhouse DIR   # on a connected machine: fill DIR for the line above
#   benchmarks/gpu_check.sh --tiny               # every section at tiny sizes on any machine (CPU): a test
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
TINY=0
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi

if ! "$PY" -c "import flax, optax, orbax.checkpoint, ml_collections, absl, etils, PIL" 2>/dev/null; then
  if [ -n "${1:-}" ]; then
    "$PY" -m pip install -q --no-index --find-links "$1" "${DEPS[@]}"
  else
    "$PY" -m pip install -q "${DEPS[@]}"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# compiled programs persist: a rerun after a cut run, and the peer's measurement of our step,
# reuse them
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/ambient_jax/xla}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

section() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }
# run CAP_SECONDS COMMAND...: the section's command under its cap; a cut or failed section says so
# and the check goes on
run() {
  local cap="$1"; shift
  local scale=$(( TINY ? 3 : 1 ))  # tiny sizes on a slow CPU: the caps are generous, not tight
  timeout $(( cap * scale )) "$@"
  local rc=$?
  if [ $rc -eq 124 ]; then echo "-- cut at its cap of $(( cap * scale )) s"; FAILED=1
  elif [ $rc -ne 0 ]; then echo "-- FAILED (exit $rc)"; FAILED=1; fi
}
FAILED=0

if [ $TINY = 1 ]; then
  PRESET=tiny; BATCHES=4; STEPS=2; SAMPLE_BATCH=4; PLATFORM=cpu
  EVAL=(--resolutions=32 --dinov2=vits14 --images=4 --batch=4 --nn=64,256)
  PEER_RUNS=tiny:4; PEER_COMPILE=()  # torch.compile's C++ build takes minutes on a CPU
else
  PRESET=ddpmpp_cifar10; BATCHES=128,512; STEPS=20; SAMPLE_BATCH=256; PLATFORM=gpu
  EVAL=(--resolutions=32,64 --dinov2=vits14,vitg14 --images=512 --batch=256)
  PEER_RUNS=ddpmpp_cifar10:512,ddpmpp_cifar10:128; PEER_COMPILE=(--compile)
fi

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi not found"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
if [ $TINY = 0 ]; then
  "$PY" -c "import jax, sys; sys.exit(0 if jax.devices()[0].platform == 'gpu' else 'no GPU visible to JAX: this check is for a GPU machine (--tiny runs it anywhere)')" || exit 1
fi

section "train step: $PRESET, bf16 and fp32, batch $BATCHES"
run 200 "$PY" benchmarks/step_speed.py --presets=$PRESET --batches=$BATCHES --dtypes=bfloat16,float32 --steps=$STEPS
if "$PY" -c "import torch" 2>/dev/null; then
  section "PyTorch peer of the same step on the same device, beside ours: $PEER_RUNS, bf16 and fp32"
  run 150 "$PY" benchmarks/peer_torch.py --runs=$PEER_RUNS --dtypes=bfloat16,float32 --steps=$STEPS \
    --channels_last "${PEER_COMPILE[@]}"
else
  section "PyTorch peer: skipped (no torch here)"
fi
section "sharded path on this device: jit over a one-device mesh and pmap, tiny U-Net"
run 45 "$PY" benchmarks/scaling.py --platform=$PLATFORM --runs=1:jit,1:pmap --preset=tiny --batch=$SAMPLE_BATCH --steps=$(( STEPS * 2 ))
section "sampling: EDM Heun 18 steps, $PRESET, batch $SAMPLE_BATCH, bf16"
run 50 "$PY" benchmarks/sampler_speed.py --presets=$PRESET --batch=$SAMPLE_BATCH --dtypes=bfloat16 --steps=18
section "evaluation features and nearest-neighbour search"
run 50 "$PY" benchmarks/eval_throughput.py "${EVAL[@]}"
section "done"
exit $FAILED
