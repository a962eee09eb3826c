"""ambient-annotate: give each corrupted training image its sigma_tn, written to a file that
training reads (--config.data.corrupt_sigma_tn=FILE).

    ambient-annotate --config=configs/mnist.py --config.data.corrupt_count=3900 \\
        --config.data.corrupt_kind=blur --config.data.corrupt_level=1.0 --out=runs/blur.json
    ambient-annotate ... --fixed=1.5          # one sigma_tn for every corrupted image

The data config names the clean training images and the corrupted ones (data.corrupt_*). Without
--fixed a noise-conditional classifier learns to tell noisy clean images from noisy corrupted
ones, and each corrupted image gets the lowest noise level from which the classifier can no
longer tell (ambient_jax.data.annotate; Daras et al. 2025, Ambient Diffusion Omni). The file
records the recipe it was made for, how, and the classifier's curves.
"""

import dataclasses
import os
from typing import Sequence

import numpy as np
from absl import flags
from ml_collections import config_flags

from ambient_jax import config as config_lib
from ambient_jax.data import DataError, annotate, corrupt, load_split
from ambient_jax.programs.common import DEFAULT_CONFIG, clean_errors, log, run_program

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "ml_collections config file (FILE.py or FILE.py:ARG)"
    )
    flags.DEFINE_string("out", None, "the annotation file to write (.json)")
    flags.DEFINE_float("fixed", 0.0, "one sigma_tn for every corrupted image (0 = the classifier)")
    flags.DEFINE_integer("steps", annotate.Recipe.steps, "classifier training steps")
    flags.DEFINE_float(
        "epsilon", annotate.Recipe.epsilon, "'cannot tell' = probability <= 1/2 + epsilon"
    )
    flags.DEFINE_integer("seed", annotate.Recipe.seed, "seed of the classifier and its noise")
    flags.DEFINE_integer(
        "batch_size", annotate.Recipe.batch_size, "classifier batch (half clean, half corrupted)"
    )


@clean_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
    if not FLAGS.out or not FLAGS.out.endswith(".json"):
        raise ValueError("give --out=FILE.json, the annotation file to write")
    if FLAGS.fixed < 0 or FLAGS.steps < 1 or not 0 < FLAGS.epsilon < 0.5:
        raise ValueError("--fixed must be >= 0, --steps >= 1 and --epsilon in (0, 0.5)")
    if FLAGS.batch_size < 2 or FLAGS.batch_size % 2:
        raise ValueError(f"--batch_size must be an even number >= 2, got {FLAGS.batch_size}")
    config = config_lib.complete(FLAGS.config)
    config.data.corrupt_sigma_tn = "unused"  # what this program writes: none to check yet
    config_lib.check_config(config)
    if not config.data.corrupt_count:
        raise DataError(
            "the config has no corrupted images: set --config.data.corrupt_count (and "
            "data.corrupt_kind, data.corrupt_level)"
        )
    split = load_split(config.data)
    if FLAGS.fixed:
        values: Sequence[float] | np.ndarray = [FLAGS.fixed] * len(split.corrupted_indices)
        how: dict = {"fixed": FLAGS.fixed}
    else:
        recipe = dataclasses.replace(
            annotate.Recipe(),
            steps=FLAGS.steps,
            epsilon=FLAGS.epsilon,
            seed=FLAGS.seed,
            batch_size=FLAGS.batch_size,
        )
        log(
            f"training the noise classifier on {len(split.train)} clean and "
            f"{len(split.corrupted)} corrupted ({config.data.corrupt_kind} "
            f"{config.data.corrupt_level:g}) images"
        )
        values, summary = annotate.annotate(split.train, split.corrupted, recipe, log=log)
        how = {"classifier": summary}
    if os.path.dirname(FLAGS.out):
        os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    corrupt.write_annotation(FLAGS.out, config.data, split.corrupted_indices, values, how)
    q = [float(v) for v in sorted(values)]
    log(
        f"wrote {FLAGS.out}: sigma_tn of {len(q)} images, median {q[len(q) // 2]:.3g} "
        f"(10%: {q[len(q) // 10]:.3g}, 90%: {q[(9 * len(q)) // 10]:.3g}); train with "
        f"--config.data.corrupt_sigma_tn={FLAGS.out}"
    )


def run() -> None:
    run_program(main, define_flags)


if __name__ == "__main__":
    run()
