"""Shared by the benchmark scripts: timing, the machine's measured matmul rate, a description of
the device, and writing results. Every ratio a benchmark reports divides two figures measured in
the same process, so a busy or throttled machine moves both."""

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

from ambient_jax import xla_cpu  # noqa: E402  (the package as installed: pip install -e .)

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


def step_flops(jitted, *args):
    """FLOPs of one call of `jitted` on `args`, counted by XLA on the program as lowered, before
    any backend compiles it.

    A compiled executable's cost analysis is no count to compare across backends: a GPU backend
    turns convolutions (and many matmuls) into library calls whose FLOPs it does not count, so the
    `ddpmpp_cifar10` step read about 47x too few FLOPs on an H200. In the lowered program a
    convolution is still a convolution, whatever the backend does with it later, so one step
    counts the same on every backend. XLA counts a convolution's in-bounds taps only: a 3x3
    'SAME' convolution of an H x W image costs 2 C_in C_out (3H - 2)(3W - 2), not 2 * 9 C_in C_out
    H W (tests/test_benchmarks.py checks both). A loop's body (lax.scan, fori_loop) is counted
    once."""
    return _flops(jitted.lower(*args).cost_analysis())


def _flops(cost):
    """The "flops" entry of an XLA cost analysis (a dict, or a list of one per device)."""
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def matmul_flops(fn, *args):
    """A hand count of `fn`'s FLOPs from its jaxpr, independent of XLA: 2 multiply-adds for every
    tap of every convolution (padding taps included) and every term of every matrix product;
    elementwise work is left out. Differentiated functions count their backward passes, as traced.
    A check of `step_flops` from outside XLA: the two agree to the padding border and the
    elementwise work."""

    def count(jaxpr):
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "conv_general_dilated":
                rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in / groups, spatial...)
                taps = np.prod([rhs.shape[d] for d in spec[1:]])
                total += 2.0 * np.prod(out.shape) * taps
            elif name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval
                size = np.prod([lhs.shape[d] for d in contract]) if contract else 1
                total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * size
            for value in eqn.params.values():  # nested programs: jit, remat, custom_vjp, cond
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        total += count(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        total += count(sub)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def compiled_step_flops(compiled):
    """The compiled executable's own FLOP count: the true count on a CPU, too few wherever the
    backend hands convolutions to a library (GPUs). Recorded beside `step_flops` to show which."""
    return _flops(compiled.cost_analysis())


def compiled_peak_bytes(compiled):
    """Peak bytes of a compiled call from XLA's memory analysis (None where the backend does not
    report it). Its FLOPs come from `step_flops`, never from the compiled executable."""
    try:
        mem = compiled.memory_analysis()
        return int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
    except Exception:  # not every backend reports it
        return None


def device_peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def results_dir():
    """benchmarks/results/, or $AMBIENT_RESULTS_DIR when it is set (a trial run that must not
    overwrite the committed figures)."""
    folder = os.environ.get("AMBIENT_RESULTS_DIR") or os.path.join(HERE, "results")
    os.makedirs(folder, exist_ok=True)
    return folder


def write_results(name, results):
    """results_dir()/NAME_PLATFORM.json."""
    path = os.path.join(results_dir(), f"{name}_{jax.devices()[0].platform}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}")
