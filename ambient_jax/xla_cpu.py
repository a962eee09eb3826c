"""XLA options for the CPU backend, set by the programs before JAX starts a backend.

XLA's CPU compiler (jaxlib 0.10) hands convolutions to YNNPACK by default. On the CPU where this
was measured (a 2-core AMD EPYC), XLA's own convolutions (Eigen's) run the networks faster: the
`ddpmpp_cifar10` train step at batch 8 by 17% (median of alternated runs: 0.75x -> 0.86x the
same step in PyTorch, `python benchmarks/peer_torch.py`), `ncsnpp_ffhq64` by 11%, the EDM sampler
on the tiny U-Net by 50-60%, Inception features by 1.8x (figures in docs/performance.md). So the
programs turn YNNPACK's convolutions off and keep YNNPACK for matmuls and reductions (turning its
reductions off too made the step 1.6x slower).

Only XLA's CPU compiler reads `xla_cpu_*` flags: GPU and TPU programs compile as before. XLA reads
XLA_FLAGS once, when JAX starts its first backend, so `use_cpu_flags()` must run before the first
computation (the programs call it first thing; a script or notebook calls it after its imports and
before any JAX array is made). A flag the user's XLA_FLAGS already sets is left as the user set it.
"""

import importlib.metadata
import os

# flag -> value. The '-' prefix removes one fusion type from XLA's default list.
CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}

# jaxlib releases whose XLA knows these flags. XLA stops the process on a flag it does not know,
# so on any other release the flags are left out rather than risked.
JAXLIB_RELEASES = ((0, 10), (0, 11))


def jaxlib_release(version: str) -> tuple[int, int]:
    """'0.10.2' -> (0, 10)."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def with_cpu_flags(xla_flags: str, jaxlib_version: str) -> str:
    """`xla_flags` with CPU_FLAGS appended, except those it already sets; unchanged on a jaxlib
    release outside JAXLIB_RELEASES."""
    if jaxlib_release(jaxlib_version) not in JAXLIB_RELEASES:
        return xla_flags
    present = {word.lstrip("-").split("=", 1)[0] for word in xla_flags.split()}
    extra = [f"--{flag}={value}" for flag, value in CPU_FLAGS.items() if flag not in present]
    return " ".join([xla_flags.strip(), *extra]).strip()


def use_cpu_flags() -> None:
    """Put CPU_FLAGS into the environment's XLA_FLAGS (see the module docstring for when)."""
    version = importlib.metadata.version("jaxlib")
    os.environ["XLA_FLAGS"] = with_cpu_flags(os.environ.get("XLA_FLAGS", ""), version)
