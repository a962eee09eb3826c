"""Sampler throughput: images/s of the EDM Heun sampler at 18 and 40 steps (35 and 79 network
calls), with the FLOPs of the network calls (XLA's cost analysis of one call as lowered, times the
calls) against the matmul rate measured in this run.

    python benchmarks/sampler_speed.py                                   # CPU-sized defaults
    python benchmarks/sampler_speed.py --presets=ddpmpp_cifar10 --batch=512 \
        --dtypes=bfloat16,float32

Prints a table and writes benchmarks/results/sampling_<platform>.json.
"""

import argparse
import time

import benchlib  # noqa: F401  (the programs' CPU flags, before JAX starts)
import jax
import numpy as np
from step_speed import RESOLUTION, bench_config

from ambient_jax.diffusion import generate
from ambient_jax.training import train_state


def network_inputs(preset, batch, dtype):
    """(config, model, params, latents at sigma 80) of a preset's sampler at this batch."""
    config = bench_config(preset, batch, dtype)
    res = config.data.resolution
    model = train_state.network(config, 3)
    x = np.zeros((1, res, res, 3), np.float32)
    params = jax.jit(model.init)(jax.random.key(0), x, np.zeros((1,), np.float32))
    return config, model, params, generate.latents_for(0, 0, batch, (res, res, 3)) * 80.0


def call_flops(model, params, latents):
    """FLOPs of one network call on the batch (benchlib.step_flops: the same on every backend)."""
    labels = np.zeros((latents.shape[0],), np.float32)
    return benchlib.step_flops(jax.jit(model.apply), params, latents, labels)


def measure(preset, batch, dtype, num_steps):
    config, model, params, latents = network_inputs(preset, batch, dtype)
    config.sample.num_steps = num_steps
    sample = generate.make_sample_fn(config, model)
    start = time.perf_counter()
    compiled = sample.lower(params, latents).compile()
    compile_s = time.perf_counter() - start
    # The step loop is a lax.fori_loop, whose body XLA's cost analysis counts once: count one
    # network call and multiply by the calls the sampler makes.
    flops = call_flops(model, params, latents) * (2 * num_steps - 1)
    seconds = benchlib.timed(lambda: jax.block_until_ready(compiled(params, latents)), repeat=2)
    return {
        "preset": preset,
        "batch": batch,
        "dtype": dtype,
        "num_steps": num_steps,
        "network_calls": 2 * num_steps - 1,
        "images_per_s": batch / seconds,
        "flops_per_s": flops / seconds,
        "compile_s": compile_s,
    }


def main():
    gpu = jax.devices()[0].platform != "cpu"
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--presets", default="ddpmpp_cifar10,ncsnpp_ffhq64" if gpu else "mlp_small,tiny"
    )
    parser.add_argument("--batch", type=int, default=256 if gpu else 64)
    parser.add_argument("--dtypes", default="bfloat16,float32" if gpu else "float32")
    parser.add_argument("--steps", default="18,40")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    results = {
        "device": benchlib.device_description(),
        "runs": [],
        "matmul_flops_per_s": {d: benchlib.matmul_peak(d) for d in dtypes},
    }
    print(results["device"])
    print(
        f"{'preset':16} {'res':>3} {'batch':>5} {'dtype':9} {'steps':>5} {'NFE':>4} {'img/s':>9} "
        f"{'util':>5} {'compile s':>9}"
    )
    for preset in args.presets.split(","):
        for dtype in dtypes:
            for num_steps in map(int, args.steps.split(",")):
                r = measure(preset, args.batch, dtype, num_steps)
                r["utilisation"] = r["flops_per_s"] / benchlib.best_peak(
                    results["matmul_flops_per_s"], dtype
                )
                results["runs"].append(r)
                print(
                    f"{preset:16} {RESOLUTION[preset]:3d} {args.batch:5d} {dtype:9} "
                    f"{num_steps:5d} {r['network_calls']:4d} "
                    f"{r['images_per_s']:9.1f} {r['utilisation']:5.2f} {r['compile_s']:9.1f}",
                    flush=True,
                )
    print(
        "util = FLOP/s of the network calls / best dense matmul FLOP/s measured so far in this "
        "run, same dtype"
    )
    benchlib.write_results("sampling", results)


if __name__ == "__main__":
    main()
