"""Train-step throughput against the device count (fake CPU devices here, real GPUs elsewhere).

    python benchmarks/scaling.py                     # 1, 2, 4, 8 fake CPU devices, jit and pmap
    python benchmarks/scaling.py --platform=gpu      # every visible GPU count 1..N (powers of 2)

Each device count runs in a process of its own (the device count is fixed at start-up). On
fake CPU devices all of them share the same cores, so the ideal is a flat images/s: any drop is
overhead that sharding adds. Prints a table and writes benchmarks/results/scaling.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(devices, mode, steps, batch, preset, sync_every_step=False):
    import jax
    import numpy as np

    from ambient_jax import parallel
    from ambient_jax.configs.mnist import get_config
    from ambient_jax.training import compiled_step, train_state, train_step

    config = get_config("ambient")
    config.parallel.mode = mode
    config.train.batch_size = batch
    config.model.preset = preset
    mesh = parallel.make_mesh(devices=jax.devices()[:devices])
    model = train_state.network(config, 1)
    optimizer, schedule = train_state.make_optimizer(config.optim, batch)
    trainer = compiled_step.Trainer(config, model, optimizer, schedule, mesh)
    # the step takes the training images and their source indices, held on device
    images = trainer.place(
        train_step.HeldData(
            np.random.RandomState(0).uniform(-1, 1, (100, 16, 16, 1)).astype(np.float32),
            np.arange(100, dtype=np.int32),
        )
    )
    state = trainer.place(train_state.init_state(config, model, optimizer))
    start = time.perf_counter()
    state, metrics = trainer.step(state, images)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(3):
        state, metrics = trainer.step(state, images)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.step(state, images)
        if sync_every_step:
            jax.block_until_ready(metrics)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "devices": devices,
                "mode": mode,
                "platform": jax.devices()[0].platform,
                "device_kind": jax.devices()[0].device_kind,
                "batch": batch,
                "preset": preset,
                "images_per_s": steps * batch / seconds,
                "first_step_s": compile_s,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--platform", default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--preset", default="mlp_small")
    parser.add_argument(
        "--runs", default=None, help="DEVICES:MODE,... (default: 1, 2, 4, 8(, 16) jit and pmap)"
    )
    parser.add_argument("--worker", nargs=2)
    args = parser.parse_args()
    if args.worker:
        # Multi-device CPU steps wait for each other (as ambient-train does): XLA's CPU collectives
        # can deadlock with several steps in flight on few cores.
        worker(
            int(args.worker[0]),
            args.worker[1],
            args.steps,
            args.batch,
            args.preset,
            sync_every_step=args.platform == "cpu" and int(args.worker[0]) > 1,
        )
        return
    if args.platform == "cpu":
        runs = [(n, "jit") for n in (1, 2, 4, 8)] + [(8, "pmap")]
    else:
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = (
            "false"  # only counting here: leave the memory to the workers
        )
        import jax

        count = len(jax.devices())
        runs = [(n, "jit") for n in (1, 2, 4, 8, 16) if n <= count] + [(count, "pmap")]
    if args.runs:
        runs = [(int(n), mode) for n, mode in (item.split(":") for item in args.runs.split(","))]
    results = []
    for devices, mode in runs:
        env = dict(os.environ)
        env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
        if args.platform == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            str(devices),
            mode,
            f"--steps={args.steps}",
            f"--batch={args.batch}",
            f"--preset={args.preset}",
        ]
        for attempt in range(2):  # one retry: a worker that crashes is reported, not hidden
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode == 0:
                break
            print(
                f"worker {devices} {mode} exited {proc.returncode} (attempt {attempt + 1}): "
                f"{proc.stderr[-500:]}"
            )
        proc.check_returncode()
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = results[0]["images_per_s"]
    print(
        f"{'devices':>8} {'mode':>5} {'images/s':>10} {'vs 1 device':>12} {'first step s':>13}   "
        f"({results[0]['device_kind']}, "
        f"{args.preset}, global batch {args.batch})"
    )
    for r in results:
        print(
            f"{r['devices']:>8} {r['mode']:>5} {r['images_per_s']:>10.0f} "
            f"{r['images_per_s'] / base:>12.2f} {r['first_step_s']:>13.1f}"
        )
    import benchlib  # here, not above: it imports JAX, which this parent leaves to its workers

    with open(
        os.path.join(benchlib.results_dir(), f"scaling_{args.platform}_{args.preset}.json"), "w"
    ) as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
