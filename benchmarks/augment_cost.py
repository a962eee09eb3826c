"""The cost of EDM's augmentation pipeline inside the train step (issue: under 5% of the step).

    python benchmarks/augment_cost.py                      # ddpmpp_cifar10, batch 8, float32
    python benchmarks/augment_cost.py --preset=ncsnpp_ffhq64 --batch=4

Measures, in one run on the same device: the train step without augmentation and with EDM's
recipe at p = 0.12 (alternated `--pairs` times, so that drift in the machine's speed falls on
both), and the pipeline alone on the step's rows (the images and their noisy copies, jitted).
Reports the pipeline's share of the augmented step both ways: (with - without) / with, and
pipeline alone / with. Writes benchmarks/results/augment_cost_<platform>.json.
"""

import argparse
import statistics
import time

import benchlib  # noqa: F401  (the programs' CPU flags, before JAX starts)
import jax
import step_speed

from ambient_jax.data import augment


def pipeline_seconds(batch, resolution, repeats):
    """EDM's recipe on `batch` images and their `batch` noisy copies, as the step runs it."""
    keys = jax.random.split(jax.random.key(0), batch)
    images = jax.random.uniform(jax.random.key(1), (batch, resolution, resolution, 3))
    run = jax.jit(
        lambda x: [augment.augment_batch(v, keys, 0.12, augment.EDM_RECIPE) for v in (x, x + 0.5)]
    )
    jax.block_until_ready(run(images))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(images))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="ddpmpp_cifar10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    print(benchlib.device_description())
    rows = {"off": [], "on": []}
    for _ in range(args.pairs):
        for name, p in (("off", 0.0), ("on", 0.12)):
            r = step_speed.measure(args.preset, args.batch, args.dtype, args.steps, augment_p=p)
            rows[name].append(r)
            print(f"augment {name:3}: {r['step_s']:.3f} s/step (compile {r['compile_s']:.0f} s)")
    off = statistics.median(r["step_s"] for r in rows["off"])
    on = statistics.median(r["step_s"] for r in rows["on"])
    alone = pipeline_seconds(args.batch, step_speed.RESOLUTION[args.preset], 10)
    result = {
        "device": benchlib.device_description(),
        "preset": args.preset,
        "batch": args.batch,
        "dtype": args.dtype,
        "step_s_without": off,
        "step_s_with": on,
        "pipeline_alone_s": alone,
        "share_by_difference": (on - off) / on,
        "share_alone": alone / on,
        "runs": rows,
    }
    print(
        f"{args.preset} batch {args.batch} {args.dtype}: step {off:.3f} s without, {on:.3f} s with "
        f"augmentation; pipeline alone {alone * 1e3:.1f} ms. Share of the augmented step: "
        f"{result['share_by_difference']:.1%} by difference, {result['share_alone']:.1%} alone"
    )
    benchlib.write_results("augment_cost", result)


if __name__ == "__main__":
    main()
