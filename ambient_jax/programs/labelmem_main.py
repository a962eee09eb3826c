"""ambient-labelmem: which MNIST training examples does a classifier memorize? (Feldman and Zhang 2020)

    ambient-labelmem --workdir=runs/labelmem [--n_train=1000] [--num_models=200] [--fraction=0.7]

Trains num_models MLP classifiers at once (vmapped, sharded over devices), each on a random
fraction of n_train embedded MNIST digits (16x16), and writes to the work dir:
scores.npz (mem, mem_stderr, the training indices, the top influence of each example on the
held-out digits), summary.json, most_least_memorized.png (top row: the most memorized digits;
bottom row: the least) and memorization_histogram.png.
"""

import json
import os

import numpy as np
from absl import flags

from ambient_jax.programs.common import clean_errors, run_program, say

flags.DEFINE_string("workdir", None, "output folder", required=True)
flags.DEFINE_integer("n_train", 1000, "training examples (the rest of the 5,000 digits are the test set)")
flags.DEFINE_integer("num_models", 200, "models trained, each on a random subset")
flags.DEFINE_float("fraction", 0.7, "share of the training examples each model sees")
flags.DEFINE_integer("steps", 400, "Adam steps per model (batch 128)")
flags.DEFINE_integer("seed", 0, "seed of the example choice, the subsets and the models")
FLAGS = flags.FLAGS


@clean_errors
def main(argv):
    del argv
    import jax

    from ambient_jax import files, parallel, plots
    from ambient_jax.data.sources import load_mnist
    from ambient_jax.plots import save_grid
    from ambient_jax.theory import label_memorization

    if not 0 < FLAGS.fraction < 1:
        raise ValueError(f"--fraction must lie strictly between 0 and 1, got {FLAGS.fraction}")
    images, labels = load_mnist(16)
    order = np.random.RandomState(FLAGS.seed).permutation(len(images))
    train_idx, test_idx = np.sort(order[: FLAGS.n_train]), np.sort(order[FLAGS.n_train :])
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    mesh = parallel.make_mesh() if len(jax.devices()) > 1 else None
    say(f"training {FLAGS.num_models} models on {FLAGS.fraction:.0%} of {FLAGS.n_train} digits each ...")
    result = label_memorization.estimate(
        flat[train_idx], labels[train_idx], 10, num_models=FLAGS.num_models, fraction=FLAGS.fraction,
        seed=FLAGS.seed, test_x=flat[test_idx], test_y=labels[test_idx], mesh=mesh, steps=FLAGS.steps,
    )
    mem, stderr = result["mem"], result["mem_stderr"]
    files.makedirs(FLAGS.workdir)
    files.save_npz(os.path.join(FLAGS.workdir, "scores.npz"), compressed=True, mem=mem, mem_stderr=stderr,
                   train_indices=train_idx, test_indices=test_idx, top_influence=result["infl"].max(axis=1),
                   top_influence_test_index=test_idx[result["infl"].argmax(axis=1)])
    ranked = np.argsort(-mem)
    summary = {
        "n_train": FLAGS.n_train, "num_models": FLAGS.num_models, "fraction": FLAGS.fraction, "steps": FLAGS.steps,
        "models_per_second": result["models_per_second"], "train_seconds": result["train_seconds"],
        "mean_mem": float(mem.mean()), "share_mem_above_0.5": float(np.mean(mem > 0.5)),
        "median_stderr": float(np.median(stderr)),
        "most_memorized": [{"index": int(train_idx[i]), "label": int(labels[train_idx[i]]), "mem": float(mem[i])} for i in ranked[:10]],
    }
    files.write_text_atomic(os.path.join(FLAGS.workdir, "summary.json"), json.dumps(summary, indent=1))
    picture = np.concatenate([images[train_idx[ranked[:16]]], images[train_idx[ranked[-16:]]]])
    save_grid(picture, os.path.join(FLAGS.workdir, "most_least_memorized.png"), cols=16)
    plots.save_histogram(mem, os.path.join(FLAGS.workdir, "memorization_histogram.png"),
                         "estimated label memorization mem(A, S, i)", "training examples", bins=40)
    say(json.dumps({k: v for k, v in summary.items() if k != "most_memorized"}))
    say(f"most memorized (index, label, mem): {[(d['index'], d['label'], round(d['mem'], 2)) for d in summary['most_memorized']]}")


def run():
    run_program(main)


if __name__ == "__main__":
    run()
