"""ambient-diagnose: where in noise a trained model generalizes and where it copies.

    ambient-diagnose --workdir=runs/quickstart/ddpm,runs/quickstart/ambient [--levels=24]

For each run (its EMA denoiser) and each of --levels log-spaced noise levels from the sampler's
sigma_min to sigma_max: the denoising error on training and held-out images (the
generalization gap), the distance to the exact denoiser of the training set (which copies), and
for ambient runs the distance to the exact minimiser over the noisy copies. Writes
<workdir>/eval/diagnose.json, diagnose.md and diagnose.png (every given run's curves, each run's
sigma_tn marked) into each run's work dir.
"""

from absl import flags

from ambient_jax.eval import diagnose
from ambient_jax.programs.common import clean_errors, log, run_program

flags.DEFINE_list(
    "workdir", None, "one or more training work dirs (comma-separated)", required=True
)
flags.DEFINE_integer("levels", 24, "number of noise levels, log-spaced over the sampler's range")
flags.DEFINE_integer(
    "max_images", 500, "training / held-out images per level (a random subset when there are more)"
)
flags.DEFINE_integer("seed", 0, "seed of the noise draws and of the image subsets")
flags.DEFINE_integer("batch_size", 256, "images denoised at once (lower it if memory runs out)")
FLAGS = flags.FLAGS


@clean_errors
def main(argv: list[str]) -> None:
    del argv

    if FLAGS.levels < 2:
        raise ValueError(f"--levels must be >= 2, got {FLAGS.levels}")
    if FLAGS.max_images < 1:
        raise ValueError(f"--max_images must be >= 1, got {FLAGS.max_images}")
    if FLAGS.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    results = [
        diagnose.diagnose_run(
            w, FLAGS.levels, FLAGS.max_images, FLAGS.seed, log=log, batch_size=FLAGS.batch_size
        )
        for w in FLAGS.workdir
    ]
    for workdir in FLAGS.workdir:
        diagnose.write_diagnosis(workdir, results, log=log)
    log(diagnose.summary_table(results))


def run() -> None:
    run_program(main)


if __name__ == "__main__":
    run()
