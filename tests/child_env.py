"""The environment of the programs and drivers the tests start in processes of their own."""

import os

# The programs and drivers the tests start compile tiny networks and run them a few steps, where
# LLVM's optimisation in XLA's CPU backend costs more than it saves: a tiny training run takes 10 s
# at level 0 against 18 s at the default, on 2 cores. The test processes keep the default: the
# Inception and DINOv2 parity tests run networks big enough that level 0 makes them slower (the
# FID parity test: 150 s against 90 s).
CHILD_XLA_FLAGS = "--xla_backend_optimization_level=0"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a program a test starts: the CPU, no fake devices, CHILD_XLA_FLAGS."""
    return dict(os.environ, XLA_FLAGS=CHILD_XLA_FLAGS, JAX_PLATFORMS="cpu", **extra)
