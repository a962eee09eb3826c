"""ambient-annotate: give each corrupted training image its sigma_tn, or each out-of-distribution
image its sigma_max, written to a file that training reads (--config.data.corrupt_sigma_tn=FILE,
--config.data.corrupt_sigma_max=FILE).

    ambient-annotate --config=configs/mnist.py --config.data.corrupt_count=3900 \\
        --config.data.corrupt_kind=blur --config.data.corrupt_level=1.0 --out=runs/blur.json
    ambient-annotate ... --fixed=1.5          # one sigma_tn for every corrupted image
    ambient-annotate --config=configs/mnist_unet.py --config.data.classes='(0,1,2,3,4)' \\
        --config.data.corrupt_kind=classes --config.data.corrupt_classes='(5,6,7,8,9)' \\
        --config.data.corrupt_count=2500 --annotate=sigma_max --out=runs/crops.json
        [--locality_from=WORKDIR]             # the map from a trained denoiser's locality

--annotate=sigma_max: a classifier per crop size tells the target's crops from the other images'
ones, each image gets the largest crop size at which it passes, and the crop-size-to-level map,
measured from the locality of a denoiser (the Gaussian fitted to the clean training images, or
the trained network in --locality_from), turns the size into its sigma_max
(ambient_jax.data.crops, ambient_jax.eval.locality). --fixed gives one sigma_max to all.

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

from ambient_jax import checkpoint
from ambient_jax import config as config_lib
from ambient_jax.data import DataError, SplitData, annotate, corrupt, crops, load_split
from ambient_jax.diffusion import precond
from ambient_jax.eval import diagnose, locality
from ambient_jax.programs.common import DEFAULT_CONFIG, clean_errors, log, run_program
from ambient_jax.types import Config

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "ml_collections config file (FILE.py or FILE.py:ARG)"
    )
    flags.DEFINE_string("out", None, "the annotation file to write (.json)")
    flags.DEFINE_enum(
        "annotate", "sigma_tn", ["sigma_tn", "sigma_max"],
        "sigma_tn (corrupted images: noise classifier) or sigma_max (out-of-distribution images: "
        "crops classifiers)",
    )  # fmt: skip
    flags.DEFINE_float("fixed", 0.0, "one value for every image (0 = the classifier)")
    flags.DEFINE_list(
        "crop_sizes", [str(w) for w in crops.CropRecipe.sizes], "sigma_max: crop sizes (even)"
    )
    flags.DEFINE_integer("crop_steps", crops.CropRecipe.steps, "sigma_max: steps per crop size")
    flags.DEFINE_float(
        "target_quantile", crops.CropRecipe.target_quantile,
        "sigma_max: an image passes at a crop size when it scores at most this quantile of the "
        "clean target images' scores there",
    )  # fmt: skip
    flags.DEFINE_float(
        "tau", locality.TAU, "sigma_max: a level is local for a crop size while G_w <= tau"
    )
    flags.DEFINE_string(
        "locality_from", "gaussian",
        "sigma_max: whose locality gives the crop-size-to-level map: 'gaussian' (the Gaussian "
        "fitted to the clean training images) or a trained work dir (its EMA network)",
    )  # fmt: skip
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
    if FLAGS.annotate == "sigma_max":
        annotate_sigma_max(config, split)
        return
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


def size_levels(
    config: Config, split: SplitData, sizes: tuple[int, ...]
) -> tuple[dict[int, float], dict]:
    """The crop-size-to-level map (eval/locality.py) and how it was measured."""
    sigmas = diagnose.sigma_grid()
    if FLAGS.locality_from == "gaussian":
        denoise, images = locality.gaussian_denoiser(split.train), split.train
    else:
        run_config, model, params = checkpoint.load_ema_params(FLAGS.locality_from)
        denoise = precond.network_denoiser(model, params, precond.from_config(run_config))
        images = split.train
        if tuple(images.shape[1:]) != config_lib.image_shape(run_config):
            raise DataError(
                f"--locality_from={FLAGS.locality_from} denoises images of shape "
                f"{config_lib.image_shape(run_config)}, not this config's {images.shape[1:]}"
            )
    globality = locality.window_globality(denoise, images, sizes, sigmas)
    levels = locality.crop_levels(globality, sigmas, images.shape[1], FLAGS.tau)
    how = {
        "locality_from": FLAGS.locality_from,
        "tau": FLAGS.tau,
        "levels": [float(s) for s in sigmas],
        "globality": {str(w): g for w, g in globality.items()},
    }
    return levels, how


def annotate_sigma_max(config: Config, split: SplitData) -> None:
    """--annotate=sigma_max: every other image's sigma_max, fixed or by its crops."""
    if FLAGS.fixed:
        values = np.full(len(split.corrupted_indices), FLAGS.fixed)
        how: dict = {"fixed": FLAGS.fixed}
    else:
        try:
            sizes = tuple(sorted(int(w) for w in FLAGS.crop_sizes))
        except ValueError:
            raise ValueError(f"--crop_sizes must be integers, got {FLAGS.crop_sizes}") from None
        if FLAGS.crop_steps < 1 or not 0 < FLAGS.target_quantile <= 1 or not 0 < FLAGS.tau < 1:
            raise ValueError(
                "--crop_steps must be >= 1, --target_quantile in (0, 1], --tau in (0, 1)"
            )
        levels, map_how = size_levels(config, split, sizes)
        log(
            "crop size -> sigma_max ("
            + ", ".join(f"{w}: {levels[w]:.3g}" for w in sizes)
            + f"), from the locality of {FLAGS.locality_from} (G_w <= {FLAGS.tau:g})"
        )
        recipe = crops.CropRecipe(
            sizes=sizes, steps=FLAGS.crop_steps, target_quantile=FLAGS.target_quantile,
            seed=FLAGS.seed,
            batch_size=FLAGS.batch_size,
        )  # fmt: skip
        values, summary, _ = crops.annotate(split.train, split.corrupted, levels, recipe, log)
        how = {"crops": summary, "map": map_how}
    if os.path.dirname(FLAGS.out):
        os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    corrupt.write_annotation(
        FLAGS.out, config.data, split.corrupted_indices, values, how, key="sigma_max"
    )
    bounded = np.sort(values[np.isfinite(values)])
    log(
        f"wrote {FLAGS.out}: sigma_max of {len(values)} images, {len(bounded)} bounded"
        + (f", median {bounded[len(bounded) // 2]:.3g}" if len(bounded) else "")
        + f"; train with --config.data.corrupt_sigma_max={FLAGS.out}"
    )


def run() -> None:
    run_program(main, define_flags)


if __name__ == "__main__":
    run()
