"""Recount the FLOPs behind every published utilisation figure from the program as lowered
(benchlib.step_flops: the same count on every backend), and rewrite the results in place.

    python benchmarks/recount_flops.py                    # every file under benchmarks/results/
    python benchmarks/recount_flops.py --h200             # also the H200 row of docs/performance.md

Until 2026-11-30 the benchmarks took a step's FLOPs from the compiled executable's cost
analysis. On a CPU that is a true count (XLA's CPU backend compiles convolutions as
convolutions); on a GPU the convolutions become library calls the analysis does not count. Each
recounted row keeps the count it was published with as `compiled_flops_per_step` (or
`compiled_flops_per_call`), and its FLOP/s and utilisation are scaled by new / old: the times and
the matmul rates are the ones measured. Counts depend only on (network, batch, dtype, remat,
augmentation), so each is lowered once.
"""

import argparse
import functools
import glob
import json
import os

import benchlib
import sampler_speed
import step_speed
import unet_step


@functools.lru_cache(maxsize=None)
def train_step_flops(preset, batch, dtype, remat=False, augment_p=0.0):
    config = step_speed.bench_config(preset, batch, dtype, 1, remat, augment_p)
    trainer, state, held = step_speed.step_inputs(config, images=max(batch, 8))
    return benchlib.step_flops(trainer.step, state, held)


@functools.lru_cache(maxsize=None)
def network_call_flops(preset, batch, dtype):
    _, model, params, latents = sampler_speed.network_inputs(preset, batch, dtype)
    return sampler_speed.call_flops(model, params, latents)


@functools.lru_cache(maxsize=None)
def mnist_unet_step_flops(batch=128):
    """configs/mnist_unet.py's train step (16x16x1 digits), as benchmarks/results/
    unet_digits_step_cpu.json measured it."""
    trainer, state, held = unet_step.step_inputs(unet_step.CONFIGS["unet_digits"], batch)
    return benchlib.step_flops(trainer.step, state, held)


def scale(row, ratio, keys):
    for key in keys:
        if row.get(key) is not None:
            row[key] *= ratio


def recount_row(row):
    """Rewrite one result row in place; returns (old, new) FLOPs, or None if it has none."""
    if "flops_per_step" in row and "preset" in row:  # step_speed.py rows
        old = row.get("compiled_flops_per_step", row["flops_per_step"])
        new = train_step_flops(
            row["preset"], row["batch"], row["dtype"], row.get("remat", False),
            row.get("augment_p", 0.0),
        )  # fmt: skip
        ratio = new / row["flops_per_step"]
        row["compiled_flops_per_step"], row["flops_per_step"] = old, new
        scale(row, ratio, ["flops_per_s", "utilisation", "forward_backward_utilisation"])
        return old, new
    if "ours_flops_per_s" in row:  # peer_torch.py rows: our f32 step
        new = train_step_flops(row["preset"], row["batch"], row.get("dtype", "float32"))
        old = row.get("compiled_flops_per_step")
        if old is None:  # first published: the count as flops_per_s * step_s
            old = row["ours_flops_per_s"] / row["ours_img_s"] * row["batch"]
        ratio = new / (row.get("flops_per_step") or old)
        row["compiled_flops_per_step"], row["flops_per_step"] = old, new
        scale(row, ratio, ["ours_flops_per_s", "ours_utilisation"])
        return old, new
    if "network_calls" in row:  # sampler_speed.py rows
        per_call = network_call_flops(row["preset"], row["batch"], row["dtype"])
        old = row.get("compiled_flops_per_call")
        if old is None:
            old = row["flops_per_s"] / row["images_per_s"] * row["batch"] / row["network_calls"]
        ratio = per_call / (row.get("flops_per_call") or old)
        row["compiled_flops_per_call"], row["flops_per_call"] = old, per_call
        scale(row, ratio, ["flops_per_s", "utilisation"])
        return old, per_call
    if row.get("preset") == "unet_digits" and "gflop_per_step" in row:
        old = row.get("compiled_gflop_per_step", row["gflop_per_step"])
        row["compiled_gflop_per_step"] = old
        row["gflop_per_step"] = mnist_unet_step_flops() / 1e9
        return old * 1e9, row["gflop_per_step"] * 1e9
    return None


def rows(tree):
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from rows(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from rows(value)


def h200_row():
    """The first GPU figure (2026-11-28, docs/performance.md): ddpmpp_cifar10, batch 128, bf16,
    2461 img/s against a bf16 matmul rate of 672.5 TFLOP/s, published as 330.7 GFLOP/step
    (the GPU executable's count). The program a GPU traces: the CPU lowerings off."""
    from ambient_jax.nets import unet

    unet.SHIFTED_RESAMPLING_ON_CPU = unet.EXPLICIT_PADDING_ON_CPU = False
    flops = train_step_flops("ddpmpp_cifar10", 128, "bfloat16")
    unet.SHIFTED_RESAMPLING_ON_CPU = unet.EXPLICIT_PADDING_ON_CPU = True
    train_step_flops.cache_clear()
    per_s = flops * 2461 / 128
    return {
        "preset": "ddpmpp_cifar10",
        "batch": 128,
        "dtype": "bfloat16",
        "images_per_s": 2461,
        "matmul_flops_per_s": 672.5e12,
        "compiled_flops_per_step": 330.7e9,
        "flops_per_step": flops,
        "flops_per_s": per_s,
        "utilisation": per_s / 672.5e12,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", default=os.path.join(benchlib.HERE, "results", "*.json"))
    parser.add_argument("--h200", action="store_true")
    args = parser.parse_args()
    if args.h200:
        row = h200_row()
        print(
            f"H200 ddpmpp_cifar10 b128 bf16: {row['flops_per_step'] / 1e9:.1f} GFLOP/step "
            f"(published {row['compiled_flops_per_step'] / 1e9:.1f}), "
            f"{row['flops_per_s'] / 1e12:.1f} TFLOP/s = {row['utilisation']:.3f} of bf16 matmul"
        )
        with open(os.path.join(benchlib.HERE, "results", "train_step_h200_recount.json"), "w") as f:
            json.dump({"recounted": "benchmarks/recount_flops.py --h200", **row}, f, indent=1)
    for path in sorted(glob.glob(args.files)):
        with open(path) as f:
            results = json.load(f)
        changes = [c for c in (recount_row(r) for r in list(rows(results))) if c]
        if not changes:
            continue
        if isinstance(results, dict):
            results["flops_counted"] = (
                "from the lowered program (benchmarks/recount_flops.py, 2026-11-30); compiled_*: "
                "the executable's count first published"
            )
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        ratios = [new / old for old, new in changes]
        print(
            f"{os.path.basename(path)}: {len(changes)} rows, new / published count "
            f"{min(ratios):.3f}-{max(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
