"""Shared by the benchmark scripts: timing, the machine's measured matmul rate, a description of
the device, and writing results. Every ratio a benchmark reports divides two figures measured in
the same process, so a busy or throttled machine moves both."""

import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(
    0, os.path.dirname(HERE)
)  # the repository root: configs/ and an uninstalled ambient_jax

from ambient_jax import xla_cpu  # noqa: E402

xla_cpu.use_cpu_flags()  # the programs' CPU flags, before JAX starts a backend


def timed(fn, repeat=3):
    """Best wall time of `repeat` calls after one warm-up call (compilation)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(dtype="float32", n=None):
    """Dense matmul FLOP/s of this device in `dtype` (f32 accumulation), best of a few square
    sizes."""
    sizes = [n] if n else ([2048] if jax.devices()[0].platform == "cpu" else [4096, 8192])
    best = 0.0
    for size in sizes:
        a = jnp.asarray(np.random.RandomState(0).randn(size, size), dtype)
        f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32).astype(a.dtype))
        best = max(best, 2 * size**3 / timed(lambda: jax.block_until_ready(f(a)), repeat=5))
    return best


def best_peak(peaks, dtype):
    """Measure the matmul rate again and keep the best: a busy moment then lowers no ratio's
    denominator."""
    peaks[dtype] = max(peaks.get(dtype, 0.0), matmul_peak(dtype))
    return peaks[dtype]


def device_description():
    device = jax.devices()[0]
    if device.platform == "cpu":
        model = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                model = next(
                    line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
                )
        except (OSError, StopIteration):
            pass
        return f"{model}, {os.cpu_count()} cores ({len(jax.devices())} JAX CPU device(s))"
    return f"{device.device_kind} x{len(jax.devices())} ({device.platform}, jax {jax.__version__})"


def compiled_figures(compiled):
    """(FLOPs per call from XLA's cost analysis, peak bytes from its memory analysis)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    peak = None
    try:
        mem = compiled.memory_analysis()
        peak = int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
    except Exception:  # not every backend reports it
        pass
    return flops, peak


def device_peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def write_results(name, results):
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"{name}_{jax.devices()[0].platform}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}")
