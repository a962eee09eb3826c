"""Train step of the two digits U-Nets, measured in one process: configs/mnist_unet.py (16x16,
three levels) against configs/mnist_unet32.py (the digits at their own 28x28 padded to 32x32,
four levels), at the batch their runs train with. It prices the 32x32 study of
docs/ambient_quality.md section 6 on the machine at hand: a 1,500-step run costs about
1,500 x step_s, plus sampling and evaluation.

    python benchmarks/unet_step.py [--steps=5]

Reports per network: compile time, best step time of a few timed steps, images/s, FLOPs per step
(XLA's count of the step as lowered: forward, backward, Adam and EMA) and the achieved FLOP/s
over this machine's dense f32 matmul rate measured in the same run. Writes
benchmarks/results/unet_step_<platform>.json.
"""

import argparse
import time

import benchlib
import jax
import step_speed

from ambient_jax.configs import mnist_unet, mnist_unet32

CONFIGS = {"unet_digits": mnist_unet, "unet_digits32": mnist_unet32}


def step_inputs(module, batch=None):
    """step_speed.step_inputs for `module`'s ambient config (1-channel digits), one batch of
    random images (at `batch`, or the config's own batch size)."""
    config = module.get_config("ambient")
    if batch:
        config.train.batch_size = batch
    return step_speed.step_inputs(config, images=config.train.batch_size)


def measure(name, steps):
    trainer, state, held = step_inputs(CONFIGS[name])
    batch = int(held.images.shape[0])
    flops = benchlib.step_flops(trainer.step, state, held)
    start = time.perf_counter()
    compiled = trainer.step.lower(state, held).compile()
    compile_s = time.perf_counter() - start
    current = [state]  # the step donates its state: each call takes the last one's

    def one_step():
        current[0], _ = compiled(current[0], held)
        jax.block_until_ready(current[0])

    step_s = benchlib.timed(one_step, repeat=steps)
    return dict(
        network=name,
        batch=batch,
        step_s=step_s,
        images_per_s=batch / step_s,
        gflop_per_step=flops / 1e9,
        compile_s=compile_s,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network")
    args = parser.parse_args()
    peak = benchlib.matmul_peak("float32")
    rows = [measure(name, args.steps) for name in CONFIGS]
    for row in rows:
        row["utilisation"] = row["gflop_per_step"] * 1e9 / row["step_s"] / peak
    small, large = rows
    print(f"device: {benchlib.device_description()}; f32 matmul {peak / 1e9:.1f} GFLOP/s")
    print("| network | batch | step s | images/s | GFLOP/step | utilisation | compile s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['network']} | {r['batch']} | {r['step_s']:.3f} | {r['images_per_s']:.0f} | "
            f"{r['gflop_per_step']:.1f} | {r['utilisation']:.1%} | {r['compile_s']:.1f} |"
        )
    ratio = large["step_s"] / small["step_s"]
    flop_ratio = large["gflop_per_step"] / small["gflop_per_step"]
    print(f"32x32 / 16x16 step time: {ratio:.2f}x (FLOPs {flop_ratio:.2f}x)")
    benchlib.write_results(
        "unet_step",
        dict(
            device=benchlib.device_description(),
            matmul_gflops=peak / 1e9,
            runs=rows,
            step_time_ratio_32_over_16=ratio,
        ),
    )


if __name__ == "__main__":
    main()
