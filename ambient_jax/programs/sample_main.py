"""ambient-sample: draw images from a run's EMA parameters.

    ambient-sample --workdir=runs/mnist_ambient [--num_samples=1000] [--seed=1]
    ambient-sample --workdir=runs/edm_cond [--class=3]   # a class-conditional network

Writes <workdir>/samples.npz (uint8 NHWC under key "samples"; a class-conditional run's classes
under "labels") and <workdir>/samples.png.
"""

import os
import time

from absl import flags

from ambient_jax import checkpoint, files, plots
from ambient_jax import config as config_lib
from ambient_jax.diffusion import generate
from ambient_jax.programs.common import clean_errors, log, run_program

flags.DEFINE_string("workdir", None, "a training work dir", required=True)
flags.DEFINE_integer("num_samples", None, "how many images (default: the run's sample.num_samples)")
flags.DEFINE_integer("seed", None, "sampling seed (default: the run's sample.seed)")
flags.DEFINE_string("out", None, "output .npz (default: <workdir>/samples.npz)")
flags.DEFINE_integer(
    "batch_size", None, "images sampled at once (default: the run's sample.batch_size)"
)
flags.DEFINE_integer(
    "class", None, "a class-conditional run: draw this class (default: each sample's uniformly)"
)
FLAGS = flags.FLAGS


@clean_errors
def main(argv: list[str]) -> None:
    del argv

    if not files.exists(os.path.join(FLAGS.workdir, "config.json")):
        config_lib.load_config(FLAGS.workdir)  # the error that names the work dir
    out = FLAGS.out or os.path.join(FLAGS.workdir, "samples.npz")
    folder = os.path.dirname(out) or "."
    if not files.exists(folder):  # before minutes of sampling, not after
        raise FileNotFoundError(
            f"--out={out}: the folder {folder} does not exist; create it or choose another --out"
        )
    if FLAGS.num_samples is not None and FLAGS.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {FLAGS.num_samples}")
    if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    config, model, params = checkpoint.load_ema_params(FLAGS.workdir)
    num = FLAGS.num_samples or config.sample.num_samples
    seed = config.sample.seed if FLAGS.seed is None else FLAGS.seed
    start = time.perf_counter()
    progress = lambda done, total: log(
        f"sampled {done}/{total} ({done / (time.perf_counter() - start):.0f} img/s)"
    )
    fixed = FLAGS["class"].value
    generate.check_class(config, fixed)
    images = generate.generate(
        config, model, params, num, seed, FLAGS.batch_size, progress=progress, class_label=fixed
    )
    labels = {}
    if generate.label_dim(config):  # each sample's class, beside it
        labels["labels"] = generate.classes_for(seed, 0, num, generate.label_dim(config), fixed)
    files.save_npz(out, compressed=True, samples=images, seed=seed, **labels)
    plots.save_grid(
        images[: config.sample.grid_size**2],
        os.path.splitext(out)[0] + ".png",
        config.sample.grid_size,
    )
    log(
        f"wrote {out} ({images.shape[0]} images, {config.sample.sampler}, "
        f"{config.sample.num_steps} steps)"
    )


def run() -> None:
    run_program(main)


if __name__ == "__main__":
    run()
