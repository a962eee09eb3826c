"""How well the crops annotation tells the target's digits from the others (docs/mixed_quality.md,
section 5): the crops classifiers trained as ambient-annotate --annotate=sigma_max trains them
(100 clean digits of 0-4 against the 2,500 of 5-9), then asked, at each crop size, on the 2,500
digits of 5-9 and on 1,000 held-out digits of 0-4 that no classifier saw.

    python benchmarks/crops_accuracy.py [--out=benchmarks/results/crops_accuracy.json]

Per size: the ROC AUC of the image score (5-9 against held-out 0-4) and the share of each that
passes; then the passing-size distribution of each and the share of (0-4, 5-9) pairs in which the
0-4 digit passes at the larger size minus the reverse.
"""

import argparse
import json
import os
import time

import numpy as np

from ambient_jax.configs.mnist_unet import get_config
from ambient_jax.data import crops, load_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "crops_accuracy.json"))  # fmt: skip
    args = parser.parse_args()
    c = get_config("ddpm")
    c.data.classes, c.data.corrupt_kind = (0, 1, 2, 3, 4), "classes"
    c.data.corrupt_classes, c.data.corrupt_count = (5, 6, 7, 8, 9), 2500
    split = load_split(c.data)
    heldout = split.heldout[np.random.RandomState(0).permutation(len(split.heldout))[:1000]]
    recipe = crops.CropRecipe()
    start = time.perf_counter()
    trained = [crops.train_size(split.train, split.corrupted, w, recipe, print)
               for w in recipe.sizes]  # fmt: skip
    score = lambda images: np.stack(
        [crops.other_probability(p, images, w, recipe) for (p, _), w in zip(trained, recipe.sizes)],
        axis=1,
    )
    p_other, p_target, p_train = score(split.corrupted), score(heldout), score(split.train)
    bars = np.quantile(p_train, recipe.target_quantile, axis=0)
    size_other = crops.passing_size(p_other, recipe.sizes, bars)
    size_target = crops.passing_size(p_target, recipe.sizes, bars)
    out = {
        "seconds": time.perf_counter() - start,
        "per_size": {
            str(w): {
                "auc": float(np.mean(p_other[:, j][:, None] > p_target[:, j][None, :])),
                "passing_other_pct": float(100 * np.mean(p_other[:, j] <= bars[j])),
                "passing_heldout_target_pct": float(100 * np.mean(p_target[:, j] <= bars[j])),
            }
            for j, w in enumerate(recipe.sizes)
        },
        "passing_size_other": {str(w): int(np.sum(size_other == w)) for w in (0, *recipe.sizes)},
        "passing_size_heldout_target": {
            str(w): int(np.sum(size_target == w)) for w in (0, *recipe.sizes)
        },
        "pairs_target_larger_minus_reverse": float(
            np.mean(np.sign(size_target[:, None] - size_other[None, :]))
        ),
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
