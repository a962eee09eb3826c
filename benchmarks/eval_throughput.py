"""Evaluation throughput: Inception and DINOv2 features per second at the paper's input sizes,
and nearest-neighbour search against the machine's dense matmul rate, all measured in this run.

    python benchmarks/eval_throughput.py                                   # CPU-sized defaults
    python benchmarks/eval_throughput.py --resolutions=32,64 --dinov2=vits14,vitg14 --images=512

Inception uses the converted FID weights when they are there (`ambient-convert inception`), else
random weights of the same shape; DINOv2 runs with random weights of each variant's shape (speed
does not depend on the values), with the paper's preprocessing (reflect-pad 32 -> 42, 64 -> 70).
Prints a table and writes benchmarks/results/eval_throughput_<platform>.json.
"""

import argparse

import benchlib  # noqa: F401  (the programs' CPU flags, before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax.eval import convert, dinov2, features, inception, memorization


def inception_params():
    try:
        return convert.load_inception_params(), "converted"
    except convert.ConversionError:
        x = jnp.zeros((1, 299, 299, 3), jnp.float32)
        return jax.jit(inception.InceptionV3().init)(jax.random.key(0), x), "random"


def nn_search(d=2048, m=4096, n=16384):
    rng = np.random.RandomState(0)
    q, r = rng.randn(m, d).astype(np.float32), rng.randn(n, d).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    seconds = benchlib.timed(
        lambda: memorization.blocked_topk(
            q, r, k=1, metric="cosine", query_block=4096, ref_block=8192
        ),
        repeat=2,
    )
    return m * n / seconds, 2 * d * m * n / seconds


def main():
    gpu = jax.devices()[0].platform != "cpu"
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolutions", default="32,64")
    parser.add_argument("--dinov2", default="vits14,vitg14")
    parser.add_argument("--images", type=int, default=512 if gpu else 64)
    parser.add_argument("--batch", type=int, default=256 if gpu else 32)
    parser.add_argument(
        "--nn", default="4096,16384", help="nearest-neighbour search: QUERIES,REFERENCES"
    )
    args = parser.parse_args()
    rng = np.random.RandomState(0)
    peak = benchlib.matmul_peak("float32")
    results = {"device": benchlib.device_description(), "matmul_flops_per_s": peak, "features": []}
    params, weights = inception_params()
    print(results["device"])
    print(f"  dense matmul (f32)                     {peak / 1e9:10.1f} GFLOP/s")
    for res in map(int, args.resolutions.split(",")):
        images = rng.randint(0, 256, (args.images, res, res, 3)).astype(np.uint8)
        seconds = benchlib.timed(
            lambda: features.inception_features(params, images, "edm", batch_size=args.batch),
            repeat=1,
        )
        results["features"].append(
            {
                "model": "inception",
                "weights": weights,
                "resolution": res,
                "images_per_s": args.images / seconds,
            }
        )
        print(
            f"  Inception-v3 ({res}x{res} -> 299)           {args.images / seconds:10.1f} images/s"
        )
        for variant in args.dinov2.split(","):
            model = dinov2.DinoV2(dinov2.VARIANTS[variant])
            dparams = jax.jit(model.init)(jax.random.key(0), dinov2.preprocess(images[:1], "paper"))
            apply = lambda p, batch: model.apply(p, dinov2.preprocess(batch, "paper"))
            seconds = benchlib.timed(
                lambda p=dparams: features.extract(apply, p, images, batch_size=args.batch),
                repeat=1,
            )
            side = dinov2.preprocess(images[:1], "paper").shape[1]
            results["features"].append(
                {
                    "model": f"dinov2_{variant}",
                    "resolution": res,
                    "input": side,
                    "images_per_s": args.images / seconds,
                }
            )
            print(
                f"  DINOv2 {variant} ({res}x{res} -> {side}, paper)   "
                f"{args.images / seconds:10.1f} images/s"
            )
            del dparams  # free the ViT-g weights before the next variant
    queries, references = (int(n) for n in args.nn.split(","))
    pairs, flops = nn_search(m=queries, n=references)
    peak = results["matmul_flops_per_s"] = max(
        peak, benchlib.matmul_peak("float32")
    )  # the best of start and end
    results["nn_pairs_per_s"], results["nn_flops_ratio_to_matmul"] = pairs, flops / peak
    print(
        f"  nearest-neighbour search (2048-d)      {pairs / 1e6:10.1f} M pairs/s = "
        f"{flops / peak:.2f} of matmul rate"
    )
    benchlib.write_results("eval_throughput", results)


if __name__ == "__main__":
    main()
