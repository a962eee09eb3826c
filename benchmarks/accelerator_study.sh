#!/usr/bin/env bash
# One accelerator session for the studies that a 2-core CPU cannot finish: the GPU check's
# headline (ddpmpp_cifar10 in bf16 at batch 512, ours and the PyTorch peer on the same GPU), then,
# with the GPU to themselves, many training runs at once (ambient-sweep variants --jobs): the
# four-level U-Net at 32x32 (docs/ambient_quality.md, section 6) and the seeds of the
# mixed-quality table (docs/mixed_quality.md). Runs train, sample and diagnose here; their
# evaluation (Inception FID, the digit classifier) runs afterwards wherever those weights are
# cached: `ambient-sweep variants --root=ROOT --variants=... --stages=eval`.
#
#   benchmarks/accelerator_study.sh OUT [WHEELHOUSE] [DEADLINE_SECONDS]
#   benchmarks/accelerator_study.sh OUT "" 0 --smoke    # every part at tiny sizes, any machine
#
# Results: OUT/check.log, OUT/runs.log, OUT/unet32.tar.xz and OUT/mixed.tar.xz (the run
# directories without checkpoints). The mixed-quality runs read the classifier annotations from
# runs_accel/mixed/annotations/{noise,blur}.json (copied there before the call). Every part has
# its own cap inside DEADLINE_SECONDS (default 560) so that a cut session still returns results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?give the folder for the results}"; WHEELS="${2:-}"; DEADLINE="${3:-560}"
SMOKE=0; [ "${4:-}" = "--smoke" ] && SMOKE=1
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
mkdir -p "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
PY="${PYTHON:-python3}"
if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$WHEELS"/*.whl || exit 1
fi
# the console scripts (ambient-sweep and the programs it calls, ambient-train, ...) beside the interpreter, running
# this checkout: setup.cfg's entry points, without installing anything else
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -e ambient_jax/configs ]; then  # setup.cfg installs configs/ as ambient_jax.configs
  ln -s ../configs ambient_jax/configs && trap 'rm -f ambient_jax/configs' EXIT
fi
BIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")"
sed -n 's/^ *\(ambient-[a-z]*\) = \([a-z_.]*\):\([a-z_]*\)$/\1 \2 \3/p' setup.cfg |
while read -r name module function; do
  [ -e "$BIN/$name" ] && continue
  printf '#!/bin/sh\nexec "%s" -c "import sys; sys.argv[0] = \\"%s\\"; from %s import %s; %s()" "$@"\n' \
    "$PY" "$name" "$module" "$function" "$function" > "$BIN/$name" && chmod +x "$BIN/$name"
done
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/ambient_jax/xla}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export AMBIENT_RESULTS_DIR="$OUT"
export PYTHONUNBUFFERED=1
echo "== device ($(date -u +%H:%M:%S))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$PY" -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" || exit 1

if [ $SMOKE = 1 ]; then
  PRESET=tiny; BATCH=4; STEPS=2; PEER=tiny:4; COMPILE=(); JOBS=2; CHECK_SECONDS=60
  SET=(--set=--config.train.num_steps=4 --set=--config.sample.num_samples=16
       --set=--config.train.track_every=2)
  UNET32=unet32_ddpm,unet32_rescaled_1.5; UNET32_SEEDS=0; MIXED=noise_known,blur_classifier
  MIXED_SEEDS=1
else
  PRESET=ddpmpp_cifar10; BATCH=512; STEPS=20; PEER=ddpmpp_cifar10:512; COMPILE=(--compile)
  JOBS=24; SET=(); CHECK_SECONDS=200
  UNET32=unet32_ddpm,unet32_rescaled_4,unet32_rescaled_6,unet32_rescaled_3,unet32_rescaled_2,unet32_rescaled_1.5,unet32_edm_1.5,unet32_gate_1.5,unet32_normalized_1.5,unet32_rescaled_1
  UNET32_SEEDS=0
  MIXED=noise_as_clean,noise_known,noise_classifier,blur_as_clean,blur_fixed,blur_classifier,noise_known_image_first
  MIXED_SEEDS=1,2
fi

echo "== training runs, $JOBS at once ($(date -u +%H:%M:%S)); $(left) s left"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # many processes share the GPU
mkdir -p runs_accel/unet32 runs_accel/mixed
(
  "$BIN/ambient-sweep" variants --root=runs_accel/unet32 --variants=$UNET32 --seeds=$UNET32_SEEDS \
    --set=--config.data.n_train=30 --set=--config.train.num_steps=1500 "${SET[@]}" \
    --stages=train,sample,diagnose --jobs=$JOBS &
  "$BIN/ambient-sweep" variants --root=runs_accel/mixed --variants=$MIXED --seeds=$MIXED_SEEDS \
    "${SET[@]}" --stages=train,sample,diagnose --jobs=$JOBS &
  wait
) > "$OUT/runs.log" 2>&1 &
RUNS=$!
# stop the runs in time to pack what finished
while kill -0 $RUNS 2>/dev/null && [ "$(left)" -gt "$CHECK_SECONDS" ]; do sleep 5; done
if kill -0 $RUNS 2>/dev/null; then
  echo "-- runs cut at the deadline"; pkill -f "ambient-sweep variants"; pkill -f "ambient-(train|sample|diagnose) --"; sleep 3
fi
echo "== pack ($(date -u +%H:%M:%S))"
for root in unet32 mixed; do
  tar -C runs_accel -cJf "$OUT/$root.tar.xz" --exclude=checkpoints --exclude=annotations "$root"
done
ls -la "$OUT"
grep -c "^\\$ ambient" "$OUT/runs.log"; grep -E "FAILED|error" "$OUT/runs.log" | head
echo "== train step: $PRESET, bf16, batch $BATCH ($(date -u +%H:%M:%S))"
timeout $(( $(left) / 2 )) "$PY" benchmarks/step_speed.py --presets=$PRESET --batches=$BATCH --dtypes=bfloat16 --steps=$STEPS \
  || echo "-- train step cut or failed ($?)"
echo "== PyTorch peer, the same step ($(date -u +%H:%M:%S))"
timeout $(( $(left) - 5 )) "$PY" benchmarks/peer_torch.py --runs=$PEER --dtypes=bfloat16 --steps=$STEPS --channels_last "${COMPILE[@]}" \
  || echo "-- peer cut or failed ($?)"

echo "== done after $(( $(date +%s) - START )) s"
