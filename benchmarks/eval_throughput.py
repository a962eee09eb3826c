"""Evaluation throughput: Inception / DINOv2 features per second and nearest-neighbour search
against the machine's dense matmul rate, all measured in this one run.

    python benchmarks/eval_throughput.py [--resolution=32] [--images=64]

Inception needs converted weights (`ambient-convert inception`); DINOv2 runs with random weights
of the ViT-S/14 shape (speed does not depend on the values). Prints a table and writes
benchmarks/results/eval_throughput_<platform>.json.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax.eval import convert, dinov2, features, memorization

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fn, repeat=3):
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(n=2048):
    a = jnp.asarray(np.random.RandomState(0).randn(n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / timed(lambda: jax.block_until_ready(f(a)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (args.images, args.resolution, args.resolution, 3)).astype(np.uint8)
    results = {"platform": jax.devices()[0].platform, "device": jax.devices()[0].device_kind,
               "devices": len(jax.devices()), "resolution": args.resolution}
    results["matmul_flops_per_s"] = matmul_peak()

    params = convert.load_inception_params()
    seconds = timed(lambda: features.inception_features(params, images, "edm", batch_size=32), repeat=1)
    results["inception_images_per_s"] = args.images / seconds

    config = dinov2.VARIANTS["vits14"]
    model = dinov2.DinoV2(config)
    x = dinov2.preprocess(images[:1], "paper")
    dparams = jax.jit(model.init)(jax.random.key(0), x)
    apply = lambda p, batch: model.apply(p, dinov2.preprocess(batch, "paper"))
    seconds = timed(lambda: features.extract(apply, dparams, images, batch_size=32), repeat=1)
    results["dinov2_vits14_images_per_s"] = args.images / seconds

    d, m, n = 2048, 4096, 16384
    q = rng.randn(m, d).astype(np.float32)
    r = rng.randn(n, d).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    seconds = timed(lambda: memorization.blocked_topk(q, r, k=1, metric="cosine", query_block=4096, ref_block=8192), repeat=2)
    results["nn_pairs_per_s"] = m * n / seconds
    results["nn_flops_ratio_to_matmul"] = 2 * d * m * n / seconds / results["matmul_flops_per_s"]

    print(f"{results['device']} x{results['devices']}, {args.resolution}x{args.resolution} inputs")
    print(f"  dense matmul (f32, 2048^3)        {results['matmul_flops_per_s'] / 1e9:10.1f} GFLOP/s")
    print(f"  Inception-v3 features (edm)       {results['inception_images_per_s']:10.1f} images/s")
    print(f"  DINOv2 ViT-S/14 features (paper)  {results['dinov2_vits14_images_per_s']:10.1f} images/s")
    print(f"  nearest-neighbour search (2048-d) {results['nn_pairs_per_s'] / 1e6:10.1f} M pairs/s = "
          f"{results['nn_flops_ratio_to_matmul']:.2f} of matmul rate")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"eval_throughput_{results['platform']}.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
