"""Where the train step's time goes: a JAX profiler trace of a few compiled steps, with the time
of every XLA operation summed by kind (convolutions, library-fused matmul/convolution kernels,
layout copies, fused elementwise/normalisation code) and the most expensive operations.

    python benchmarks/profile_step.py --preset=ddpmpp_cifar10 --batch=8
    python benchmarks/profile_step.py --preset=tiny --batch=32 --xla_flags=--xla_cpu_use_onednn=true

Operations that run concurrently on several threads are each counted, so the shares are of the
summed operation time. Writes benchmarks/results/profile_<preset>_<platform>.json.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile


def kind(name):
    if re.match(r"(conv_general_dilated|convolution)", name):
        return "convolution (XLA/Eigen)"
    if re.match(r"(ynn|xnn|onednn)_fusion|custom-call|__onednn", name):
        return "library kernel (YNNPACK/XNNPACK/oneDNN: matmul or conv + epilogue)"
    if name.startswith(("dot", "gemm", "cublas")):
        return "matmul"
    if "transpose" in name or name.startswith(
        ("copy", "bitcast", "concatenate", "slice", "dynamic")
    ):
        return "layout: transpose / copy / concatenate"
    if "fusion" in name or name.startswith(
        ("reduce", "add", "multiply", "broadcast", "wrapped", "select", "exp")
    ):
        return "fused elementwise / reductions (norms, SiLU, Adam, EMA)"
    return "other"


def op_times(trace_dir):
    path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    times = collections.Counter()
    for e in events:
        if "dur" not in e or e.get("ph") == "M":
            continue
        thread, name = threads.get((e["pid"], e["tid"]), ""), e["name"]
        if "python" in thread or name.startswith(("$", "ThunkExecutor", "PjitFunction", "Thunk")):
            continue
        times[re.sub(r"\.\d+$", "", name) if name.startswith("ynn_fusion") else name] += (
            e["dur"] / 1e6
        )
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="ddpmpp_cifar10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--xla_flags", default="")
    args = parser.parse_args()
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()

    import benchlib  # noqa: F401
    import jax
    from step_speed import bench_config, step_inputs

    config = bench_config(args.preset, args.batch, args.dtype)
    trainer, state, images = step_inputs(config)
    state, metrics = trainer.step(state, images)
    jax.block_until_ready(metrics)
    trace_dir = tempfile.mkdtemp()
    import time

    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(args.steps):
            state, metrics = trainer.step(state, images)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - start) / args.steps
    times = op_times(trace_dir)
    shutil.rmtree(trace_dir, ignore_errors=True)
    total = sum(times.values())
    by_kind = collections.Counter()
    for name, seconds in times.items():
        by_kind[kind(name)] += seconds
    print(
        f"{benchlib.device_description()}; {args.preset} batch {args.batch} {args.dtype}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(
        f"wall time per step (traced) {wall:.3f} s; summed operation time per step "
        f"{total / args.steps:.3f} s"
    )
    for name, seconds in by_kind.most_common():
        print(f"  {100 * seconds / total:5.1f}%  {seconds / args.steps:8.3f} s  {name}")
    print("most expensive operations:")
    for name, seconds in times.most_common(12):
        print(f"  {100 * seconds / total:5.1f}%  {seconds / args.steps:8.3f} s  {name}")
    results = {
        "device": benchlib.device_description(),
        "preset": args.preset,
        "batch": args.batch,
        "dtype": args.dtype,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "wall_s_per_step": wall,
        "by_kind_s_per_step": {k: v / args.steps for k, v in by_kind.items()},
        "top_ops_s_per_step": {k: v / args.steps for k, v in times.most_common(30)},
    }
    benchlib.write_results(f"profile_{args.preset}", results)


if __name__ == "__main__":
    sys.exit(main())
