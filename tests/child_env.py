"""The environment of the programs and drivers the tests start in processes of their own."""

import os


def child_env() -> dict[str, str]:
    """The test's environment on the CPU without its fake devices (the programs use what is there).
    It keeps JAX_DISABLE_MOST_OPTIMIZATIONS from tests/conftest.py: a program a test starts
    compiles a tiny network and runs it a few steps (a tiny training run: 10 s instead of 18 s)."""
    return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
