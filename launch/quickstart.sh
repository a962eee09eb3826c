#!/usr/bin/env bash
# The paper's Table 1 in miniature, on the embedded MNIST digits, on a CPU:
# set up a virtual environment, then train plain denoising ("ddpm") and ambient diffusion on the
# same 100 training digits, sample 1,000 images from each, measure how many copy a training
# image, and print both side by side.
#   launch/quickstart.sh [OUTPUT_DIR]        (default: runs/quickstart)
# Extra settings for both runs go in QUICKSTART_FLAGS, e.g.
#   QUICKSTART_FLAGS="--config.train.num_steps=500" launch/quickstart.sh /tmp/qs
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AMBIENT_VENV:-.venv}"
out="${1:-runs/quickstart}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e .
export PATH="$PWD/$venv/bin:$PATH"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

start=$(date +%s)
for objective in ddpm ambient; do
  echo "=== $objective: train, sample, evaluate ($out/$objective)"
  ambient-train --config="configs/mnist.py:$objective" --workdir="$out/$objective" ${QUICKSTART_FLAGS:-}
  ambient-sample --workdir="$out/$objective"
  # Pixel space only, to stay within minutes on a CPU (--fid adds the Inception FID: see README).
  ambient-eval --workdir="$out/$objective" --nofid > /dev/null
done
echo
echo "=== ddpm vs ambient on the same $(python -c "import json;print(json.load(open('$out/ddpm/subset.json'))['n_train'])") training digits ($(( $(date +%s) - start )) s)"
ambient-eval --compare="$out/ddpm,$out/ambient" | tee "$out/table.md"
echo "Sample grids: $out/*/samples.png   nearest training images: $out/*/eval/nearest.png"
