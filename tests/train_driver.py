"""Runs ambient_jax.training.train.train in a process of its own, for the tests that kill, signal or
distribute it.

    python tests/train_driver.py WORKDIR '{"train.num_steps": 6, ...}' [--kill-after-save-at STEP]
                                 [--devices N] [--process I --processes P --port PORT]

--kill-after-save-at sends SIGKILL to this process right after the (asynchronous) save of
that step has started, the worst moment for a checkpoint to be interrupted. --fail-save-at makes
the save of that step fail in the background as a full disk does (nothing of it is left, and
orbax reports "No space left on device" when asked); --disk-free makes the disk report that many
free bytes.
"""

import argparse
import json
import os
import signal
import sys

parser = argparse.ArgumentParser()
parser.add_argument("workdir")
parser.add_argument("changes")
parser.add_argument("--kill-after-save-at", type=int, default=0)
parser.add_argument("--fail-save-at", type=int, default=0)
parser.add_argument("--disk-free", type=int, default=-1, help="bytes the disk says it has free")
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--process", type=int, default=-1)
parser.add_argument("--processes", type=int, default=1)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--dump", default="", help="write the final parameters to this .npz")
args = parser.parse_args()

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from test_training import tiny_config  # noqa: E402

from ambient_jax import checkpoint  # noqa: E402
from ambient_jax.training import train  # noqa: E402

config = tiny_config()
for field, value in json.loads(args.changes).items():
    section, name = field.split(".")
    config[section][name] = value
if args.process >= 0:
    config.parallel.coordinator_address = f"127.0.0.1:{args.port}"
    config.parallel.num_processes = args.processes
    config.parallel.process_id = args.process
    config.parallel.cpu_collectives = "gloo"

if args.kill_after_save_at:
    real_save = checkpoint.save

    def save_then_die(manager, step, state):
        real_save(manager, step, state)
        if step == args.kill_after_save_at:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save = save_then_die

if args.fail_save_at:
    import shutil

    real_save = checkpoint.save

    def save_then_fail(manager, step, state):
        real_save(manager, step, state)
        if step == args.fail_save_at:
            manager.wait_until_finished()
            shutil.rmtree(os.path.join(args.workdir, "checkpoints", str(step)))
            manager.reload()

            def full_disk():
                raise OSError(28, "No space left on device")

            manager.check_for_errors = full_disk

    checkpoint.save = save_then_fail
if args.disk_free >= 0:
    import collections

    usage = collections.namedtuple("usage", "total used free")
    checkpoint.shutil.disk_usage = lambda path: usage(10**12, 10**12, args.disk_free)

state = train.train(config, args.workdir, log=lambda m: print(m, flush=True))
if args.dump and jax.process_index() == 0:
    leaves = jax.tree_util.tree_leaves((state.params, state.ema_params))
    np.savez(args.dump, *[np.asarray(jax.device_get(leaf)) for leaf in leaves])
print("finished", int(jax.device_get(state.step)), flush=True)
