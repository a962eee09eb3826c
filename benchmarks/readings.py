"""Each study under both readings, written into the README (<!-- readings -->) from the results
files: the paper's own measures (Inception FID and the share of samples with similarity > 0.95
to a training image, as ratios to ddpm's) and the digit classifier's (recognisable digits, in
points against ddpm's). The paper's CIFAR-10 300-image row (Shah et al. 2025, Table 1; DINOv2
similarity) is the yardstick.

    python benchmarks/readings.py            # rewrites the README's block
"""

import json
import os

import numpy as np
from mixed_quality_tables import replace_between

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "README.md")
# The paper's Table 1, CIFAR-10, 300 images: FID 25.1 (DDPM) and 23.91 (ambient), S>0.95 56.56%
# and 9.64%.
PAPER_CIFAR10_300 = (23.91 / 25.1, 9.64 / 56.56)

# (study, results file, ddpm's key, the ambient row's key, what counts as recognisable)
STUDIES = (
    ("16x16 U-Net from scratch, n = 30", "unet30_variants.json", "unet_ddpm", "unet_rescaled_2",
     "confident"),
    ("32x32 U-Net from scratch, n = 30", "unet32_cpu_1000steps.json", "unet32_ddpm",
     "unet32_rescaled_2", "confident"),
    ("fine-tuned on 30 sevens, ambient at every level", "finetune.json", "n30_ddpm", "n30_ambient",
     "new class"),
    ("fine-tuned on 30 sevens, noisy copies only", "finetune.json", "n30_ddpm", "n30_noisy",
     "new class"),
)  # fmt: skip


def _recognisable(m, kind):
    if kind == "new class":
        return m["confident_by_class"][m["classes"][0]]
    return m["confident_digits"]


def table_text():
    out = [
        "| study (ambient row against ddpm; seeds) | Inception FID / ddpm | robust S>0.95 / ddpm | "
        "recognisable digits, points against ddpm |",
        "|---|---|---|---|",
        f"| the paper: CIFAR-10, 300 images (its Table 1; DINOv2 S>0.95) | "
        f"{PAPER_CIFAR10_300[0]:.2f} | {PAPER_CIFAR10_300[1]:.2f} | (no classifier) |",
    ]
    for study, name, ddpm, row, kind in STUDIES:
        path = os.path.join(RESULTS, name)
        if not os.path.exists(path):
            continue
        raw = json.load(open(path))
        runs = lambda prefix: [m for k, m in raw.items() if k.rsplit("_seed", 1)[0] == prefix]
        base, amb = runs(ddpm), runs(row)
        if not base or not amb:
            continue
        mean = lambda ms, get: float(np.mean([get(m) for m in ms]))
        fid = lambda m: m["fid_inception_edm"]
        s95 = lambda m: m["robust_pixel_similarity"]["S>0.95"]
        digits = lambda m: _recognisable(m, kind)
        seeds = f"{len(amb)} / {len(base)}"
        out.append(
            f"| {study} ({seeds}) | {mean(amb, fid) / mean(base, fid):.2f} | "
            f"{mean(amb, s95) / mean(base, s95):.2f} | "
            f"{mean(amb, digits) - mean(base, digits):+.1f} ({kind}) |"
        )
    return "\n".join(out) + "\n"


def main():
    replace_between(README, "readings", table_text())
    print(table_text())


if __name__ == "__main__":
    main()
