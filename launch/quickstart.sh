#!/usr/bin/env bash
# The paper's Table 1 in miniature, on the embedded MNIST digits, on a CPU:
# set up a virtual environment, then train plain denoising ("ddpm") and ambient diffusion on the
# same 100 training digits, sample 1,000 images from each, measure how many copy a training
# image (in pixels and in a noise-robust view) and their quality (FD-pixel on all 1,000, Inception
# FID on the first 500 against 500 held-out digits), diagnose both per noise level, and print
# both side by side.
#   launch/quickstart.sh [OUTPUT_DIR]        (default: runs/quickstart)
# Extra settings for both runs go in QUICKSTART_FLAGS, e.g.
#   QUICKSTART_FLAGS="--config.train.num_steps=500" launch/quickstart.sh /tmp/qs
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/quickstart}"
source launch/setup_run.sh  # .venv, the package, the FID weights
# JAX uses an accelerator when one is installed (pip install "jax[cuda12]" or "jax[tpu]"), else the CPU.
echo "JAX backend: $("$venv/bin/python" -c 'import jax; print(jax.default_backend(), jax.devices()[0].device_kind)')"

start=$(date +%s)
for objective in ddpm ambient; do
  echo "=== $objective: train, sample, evaluate ($out/$objective)"
  ambient-train --config="configs/mnist.py:$objective" --workdir="$out/$objective" ${QUICKSTART_FLAGS:-}
  ambient-sample --workdir="$out/$objective"
  ambient-eval --workdir="$out/$objective" --fid --fid_samples=500 > /dev/null
done
ambient-diagnose --workdir="$out/ddpm,$out/ambient" > /dev/null
echo
echo "=== ddpm vs ambient on the same $(python -c "import json;print(json.load(open('$out/ddpm/subset.json'))['n_train'])") training digits ($(( $(date +%s) - start )) s)"
ambient-eval --compare="$out/ddpm,$out/ambient" | tee "$out/table.md"
echo "Sample grids: $out/*/samples.png   nearest training images: $out/*/eval/nearest.png"
echo "Per noise level: $out/*/eval/diagnose.png   memorization during training: $out/*/tracking.png"
