"""ambient-labelmem: which MNIST training examples does a classifier memorize? (Feldman and Zhang
2020)

    ambient-labelmem --workdir=runs/labelmem [--n_train=1000] [--num_models=200] [--fraction=0.7]

Trains num_models MLP classifiers at once (vmapped, sharded over devices), each on a random
fraction of n_train embedded MNIST digits (16x16), and writes to the work dir:
scores.npz (mem, mem_stderr, the training indices, the top influence of each example on the
held-out digits), summary.json, most_least_memorized.png (top row: the most memorized digits;
bottom row: the least) and memorization_histogram.png.
"""

import json

from absl import flags

from ambient_jax.programs.common import clean_errors, log, run_program
from ambient_jax.theory import label_memorization

flags.DEFINE_string("workdir", None, "output folder", required=True)
flags.DEFINE_integer(
    "n_train", 1000, "training examples (the rest of the 5,000 digits are the test set)"
)
flags.DEFINE_integer("num_models", 200, "models trained, each on a random subset")
flags.DEFINE_float("fraction", 0.7, "share of the training examples each model sees")
flags.DEFINE_integer("steps", 400, "Adam steps per model (batch 128)")
flags.DEFINE_integer("seed", 0, "seed of the example choice, the subsets and the models")
FLAGS = flags.FLAGS


@clean_errors
def main(argv: list[str]) -> None:
    del argv

    if not 0 < FLAGS.fraction < 1:
        raise ValueError(f"--fraction must lie strictly between 0 and 1, got {FLAGS.fraction}")
    log(
        f"training {FLAGS.num_models} models on {FLAGS.fraction:.0%} of {FLAGS.n_train} digits "
        "each ..."
    )
    summary = label_memorization.mnist_study(
        FLAGS.workdir, FLAGS.n_train, FLAGS.num_models, FLAGS.fraction, FLAGS.steps, FLAGS.seed
    )
    log(json.dumps({k: v for k, v in summary.items() if k != "most_memorized"}))
    log(
        "most memorized (index, label, mem): "
        f"{[(d['index'], d['label'], round(d['mem'], 2)) for d in summary['most_memorized']]}"
    )


def run() -> None:
    run_program(main)


if __name__ == "__main__":
    run()
