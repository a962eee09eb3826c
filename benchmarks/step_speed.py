"""Train-step throughput and utilisation: images/s and achieved FLOP/s of the compiled step for
the network presets at a few batch sizes, against the dense matmul rate measured in this run.

    python benchmarks/step_speed.py                                  # CPU-sized defaults
    python benchmarks/step_speed.py --presets=ddpmpp_cifar10 --batches=128,512 \\
        --dtypes=bfloat16,float32

FLOPs come from XLA's cost analysis of the step as lowered, before backend compilation (forward,
backward, Adam and EMA; the same count on every backend, see benchlib.step_flops);
utilisation = achieved FLOP/s / matmul FLOP/s in the same compute dtype. Also reported: compile
time of the step, peak memory (XLA's memory analysis; on GPUs also the allocator's peak) and
steps per dispatch (train.steps_per_dispatch: several steps fused with lax.scan). With --parts
also the parameter update (Adam + EMA) timed alone. Prints a table and writes
benchmarks/results/train_step_<platform>.json.
"""

import argparse
import time

import benchlib  # noqa: F401  (the programs' CPU flags, before JAX starts)
import jax
import numpy as np

from ambient_jax import config as config_lib
from ambient_jax import parallel
from ambient_jax.training import compiled_step, train_state
from ambient_jax.training.train_step import HeldData

RESOLUTION = {
    "tiny": 32,
    "ddpmpp_cifar10": 32,
    "ncsnpp_cifar10": 32,
    "ncsnpp_ffhq64": 64,
    "mlp_small": 16,
}
CPU_DEFAULTS = dict(
    presets="tiny,ddpmpp_cifar10,ncsnpp_ffhq64",
    batches="tiny:32,tiny:128,ddpmpp_cifar10:8,ncsnpp_ffhq64:4",
    dtypes="float32",
)
GPU_DEFAULTS = dict(
    presets="tiny,ddpmpp_cifar10,ncsnpp_ffhq64",
    batches="128,512,ncsnpp_ffhq64:64,ncsnpp_ffhq64:256",
    dtypes="bfloat16,float32",
)


def bench_config(preset, batch, dtype, steps_per_dispatch=1, remat=False, augment_p=0.0):
    c = config_lib.base_config()
    c.data.resolution, c.data.channels, c.data.n_train = RESOLUTION[preset], 3, 256
    c.data.augment_flip = not augment_p  # EDM's pipe flips itself
    c.data.augment_p = augment_p
    c.model.preset, c.model.compute_dtype, c.model.remat = preset, dtype, remat
    c.train.batch_size, c.train.steps_per_dispatch = batch, steps_per_dispatch
    c.loss.objective, c.loss.sigma_tn = "ambient", 0.5
    return c


def step_inputs(config, images=256):
    """(the compiled step on one device, its initial state, `images` random training images with
    their source indices, held on device as the step takes them)."""
    trainer, model, optimizer = one_device_trainer(config)
    shape = (images, config.data.resolution, config.data.resolution, config.data.channels)
    pixels = np.random.RandomState(0).uniform(-1, 1, shape).astype(np.float32)
    held = trainer.place(HeldData(pixels, np.arange(images, dtype=np.int32)))
    return trainer, trainer.place(train_state.init_state(config, model, optimizer)), held


def step_shapes(config, images=256):
    """step_inputs with the state and images as shapes and dtypes only (jax.ShapeDtypeStruct):
    enough to lower the step and count its FLOPs (benchlib.step_flops), without initialising the
    network (half a minute for ddpmpp_cifar10 on 2 CPU cores)."""
    trainer, model, optimizer = one_device_trainer(config)
    state = jax.eval_shape(lambda: train_state.init_state(config, model, optimizer))
    shape = (images, config.data.resolution, config.data.resolution, config.data.channels)
    held = HeldData(
        jax.ShapeDtypeStruct(shape, np.float32), jax.ShapeDtypeStruct((images,), np.int32)
    )
    return trainer, state, held


def one_device_trainer(config):
    """(the compiled step's Trainer on one device, the network, the optimizer)."""
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    model = train_state.network(config, config.data.channels)
    optimizer, schedule = train_state.make_optimizer(config.optim, config.train.batch_size)
    return compiled_step.Trainer(config, model, optimizer, schedule, mesh), model, optimizer


def measure(preset, batch, dtype, steps, steps_per_dispatch=1, remat=False, augment_p=0.0):
    config = bench_config(preset, batch, dtype, steps_per_dispatch, remat, augment_p)
    trainer, state, images = step_inputs(config)
    res = config.data.resolution
    start = time.perf_counter()
    compiled = (trainer.multi_step or trainer.step).lower(state, images).compile()
    compile_s = time.perf_counter() - start
    peak = benchlib.compiled_peak_bytes(compiled)
    # counted before backend compilation (the same on every backend); a scan's body is counted
    # once, so count one step, times k
    flops = benchlib.step_flops(trainer.step, state, images) * steps_per_dispatch
    state, metrics = compiled(state, images)  # warm-up
    jax.block_until_ready(metrics)
    calls = max(1, steps // steps_per_dispatch)
    start = time.perf_counter()
    for _ in range(calls):
        state, metrics = compiled(state, images)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    done = calls * steps_per_dispatch
    return {
        "preset": preset,
        "batch": batch,
        "dtype": dtype,
        "steps_per_dispatch": steps_per_dispatch,
        "remat": remat,
        "augment_p": augment_p,
        "resolution": res,
        "images_per_s": done * batch / seconds,
        "step_s": seconds / done,
        "flops_per_step": flops / steps_per_dispatch,
        # the executable's own count, for comparison only (too few on a GPU: library calls)
        "compiled_flops_per_step": benchlib.compiled_step_flops(
            trainer.step.lower(state, images).compile() if steps_per_dispatch > 1 else compiled
        ),
        "flops_per_s": flops * calls / seconds,
        "compile_s": compile_s,
        "peak_bytes": peak,
        "device_peak_bytes": benchlib.device_peak_bytes(),
    }


def update_seconds(preset, batch, steps):
    """Seconds of the step's parameter update alone: Adam (the run's optax chain) and the EMA
    over every parameter, compiled with the state donated as the step has it. The rest of the
    step is the forward and backward pass."""
    import optax

    config = bench_config(preset, batch, "float32")
    optimizer, _ = train_state.make_optimizer(config.optim, batch)
    state = train_state.init_state(config, train_state.network(config, 3), optimizer)
    grads = jax.tree_util.tree_map(lambda p: p * 1e-3, state.params)

    def update(state, grads):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        state = state.replace(
            params=optax.apply_updates(state.params, updates), opt_state=opt_state
        )
        return train_state.update_ema(state, batch, config.ema)

    compiled = jax.jit(update, donate_argnums=0).lower(state, grads).compile()
    state = jax.block_until_ready(compiled(state, grads))  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        state = compiled(state, grads)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps


def parse_batches(spec, presets):
    """ "128,ffhq:64" -> {preset: [batches]}: a bare number applies to every preset without its
    own."""
    plain, own = [], {}
    for item in spec.split(","):
        if ":" in item:
            name, b = item.split(":")
            own.setdefault(name, []).append(int(b))
        else:
            plain.append(int(item))
    return {p: own.get(p, plain) for p in presets}


def main():
    gpu = jax.devices()[0].platform != "cpu"
    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default=defaults["presets"])
    parser.add_argument(
        "--batches", default=defaults["batches"], help="BATCH or PRESET:BATCH, comma separated"
    )
    parser.add_argument("--dtypes", default=defaults["dtypes"])
    parser.add_argument(
        "--steps", type=int, default=20 if gpu else 4, help="timed steps per configuration"
    )
    parser.add_argument("--steps_per_dispatch", type=int, default=1)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument(
        "--parts",
        action="store_true",
        help="also time the parameter update (Adam + EMA) alone: its share of the step, and the "
        "utilisation of the rest (forward + backward)",
    )
    parser.add_argument("--out", default="train_step")
    args = parser.parse_args()

    presets = args.presets.split(",")
    results = {"device": benchlib.device_description(), "runs": [], "matmul_flops_per_s": {}}
    for dtype in args.dtypes.split(","):
        results["matmul_flops_per_s"][dtype] = benchlib.matmul_peak(dtype)
    print(results["device"])
    for dtype, peak in results["matmul_flops_per_s"].items():
        print(f"  dense matmul ({dtype}): {peak / 1e9:.1f} GFLOP/s")
    header = (
        f"{'preset':16} {'batch':>5} {'dtype':9} {'k':>2} {'img/s':>9} {'GFLOP/step':>10} "
        f"{'GFLOP/s':>9} "
        f"{'compile s':>9} {'peak MiB':>9}"
    )
    print(header)
    for preset in presets:
        for batch in parse_batches(args.batches, presets)[preset]:
            for dtype in args.dtypes.split(","):
                r = measure(preset, batch, dtype, args.steps, args.steps_per_dispatch, args.remat)
                if args.parts:
                    r["update_s"] = update_seconds(preset, batch, max(args.steps, 10))
                results["runs"].append(r)
                peak = r["device_peak_bytes"] or r["peak_bytes"] or 0
                print(
                    f"{preset:16} {batch:5d} {dtype:9} {r['steps_per_dispatch']:2d} "
                    f"{r['images_per_s']:9.1f} "
                    f"{r['flops_per_step'] / 1e9:10.1f} {r['flops_per_s'] / 1e9:9.1f} "
                    f"{r['compile_s']:9.1f} {peak / 2**20:9.0f}",
                    flush=True,
                )
    # again at the end: the best rate is the denominator
    for dtype in results["matmul_flops_per_s"]:
        benchlib.best_peak(results["matmul_flops_per_s"], dtype)
    print("utilisation = achieved FLOP/s / best dense matmul FLOP/s of this run, same dtype:")
    for r in results["runs"]:
        r["utilisation"] = r["flops_per_s"] / results["matmul_flops_per_s"][r["dtype"]]
        print(
            f"  {r['preset']:16} batch {r['batch']:4d} {r['dtype']:9} "
            f"k={r['steps_per_dispatch']}: {r['utilisation']:.2f}"
        )
        if "update_s" in r:
            # the update's own FLOPs are a few per parameter: all but nothing of the count
            rest = r["flops_per_step"] / (r["step_s"] - r["update_s"])
            r["forward_backward_utilisation"] = rest / results["matmul_flops_per_s"][r["dtype"]]
            print(
                f"    Adam + EMA alone {r['update_s'] * 1e3:.1f} ms = "
                f"{r['update_s'] / r['step_s']:.0%} of the step; forward + backward at "
                f"{r['forward_backward_utilisation']:.2f} of the matmul rate"
            )
    for dtype, peak in results["matmul_flops_per_s"].items():
        print(f"  dense matmul ({dtype}), best of start and end: {peak / 1e9:.1f} GFLOP/s")
    benchlib.write_results(args.out, results)


if __name__ == "__main__":
    main()
