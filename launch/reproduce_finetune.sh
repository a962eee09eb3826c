#!/usr/bin/env bash
# The fine-tuning study of docs/finetune.md, on the embedded digits, on a CPU: set up a virtual
# environment, pretrain the digits U-Net on nine classes (reused when finished), fine-tune it on n
# digits of the held-out class with each row of configs/mnist_finetune.py, sample, evaluate and
# diagnose seed 0 of each row, and write the tables (docs/finetune.md, the README and
# benchmarks/results/finetune.json).
#   launch/reproduce_finetune.sh [ROOT]          (default: runs/finetune)
# What runs: SIZES (default "30 100"), ROWS ("ddpm ambient noisy gated scratch"; ambient_S,
# noisy_S and gated_S at sigma_tn S, as configs/mnist_finetune.py says), SEEDS ("0 1 2").
# A stage whose output exists is skipped, so a cut run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-runs/finetune}"
source launch/setup_run.sh  # .venv, the package, the FID weights

stage() {  # stage NAME WORKDIR COMMAND...: run COMMAND once; its seconds go to WORKDIR/stages/NAME.json
  local name="$1" workdir="$2"
  shift 2
  [ -e "$workdir/stages/$name.json" ] && return  # done (a cut training resumes when re-run)
  echo "\$ $*"
  local t0
  t0=$(date +%s)
  mkdir -p "$workdir/stages"
  "$@" > "$workdir/stages/$name.log" 2>&1 || { tail -n 5 "$workdir/stages/$name.log"; exit 1; }
  echo "{\"seconds\": $(( $(date +%s) - t0 ))}" > "$workdir/stages/$name.json"
}

start=$(date +%s)
pretrain="$root/pretrain"
stage train "$pretrain" ambient-train --config=configs/mnist_finetune.py:pretrain --workdir="$pretrain"
stage sample "$pretrain" ambient-sample --workdir="$pretrain"
# Pixel and digit-classifier measures (no Inception FID: its features of the 4,000 training
# digits alone would take about 10 minutes on 2 CPU cores)
stage eval "$pretrain" ambient-eval --workdir="$pretrain" --nofid

for n in ${SIZES:-30 100}; do
  for seed in ${SEEDS:-0 1 2}; do
    for row in ${ROWS:-ddpm ambient noisy gated scratch}; do
      wd="$root/n${n}/${row}_seed${seed}"
      init=()
      [ "$row" = scratch ] || init=(--init_from="$pretrain")
      stage train "$wd" ambient-train --config="configs/mnist_finetune.py:$row" --workdir="$wd" \
        "${init[@]}" --config.data.n_train="$n" --config.train.seed="$seed"
      stage sample "$wd" ambient-sample --workdir="$wd"
      stage eval "$wd" ambient-eval --workdir="$wd" --fid --fid_samples=500
      if [ "$seed" = 0 ]; then  # per noise level: seed 0 of each row (minutes each)
        stage diagnose "$wd" ambient-diagnose --workdir="$wd"
      fi
    done
  done
done
"$venv/bin/python" benchmarks/finetune_tables.py --root="$root"
echo "fine-tuning study done in $(( $(date +%s) - start )) s: $root; tables in docs/finetune.md"
