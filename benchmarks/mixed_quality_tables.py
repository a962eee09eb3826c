"""Write the mixed-quality tables from the runs that measured them (no figure typed by hand).

    python benchmarks/mixed_quality_tables.py --root=runs/mixed

Reads every finished run under --root (the mixed-quality rows of ambient-sweep variants), writes
benchmarks/results/mixed_quality.json (raw metrics and per-noise-level curves), the full table
and the per-noise-level rows between the `<!-- mixed-results -->` markers of
docs/mixed_quality.md, and the short table between the `<!-- mixed-readme -->` markers of
README.md.
"""

import argparse
import json
import os
import re
import sys

import numpy as np

from ambient_jax.programs import variant_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = (
    "mixed_clean_only",
    "noise_as_clean",
    "noise_known_image_first",
    "noise_known",
    "noise_known_local_low",
    "noise_classifier",
    "blur_as_clean",
    "blur_fixed",
    "blur_classifier",
)
README_ROWS = ("mixed_clean_only", "noise_as_clean", "noise_known", "noise_known_local_low",
               "blur_as_clean", "blur_fixed", "blur_classifier")  # fmt: skip
README_COLUMNS = ("variant", "seeds", "FD-pixel", "FD-digits", "confident digits %", "extraction %")
LEVELS = (0.2004, 0.5036, 1.266, 2.006, 3.18)  # diagnose.py's grid points nearest 0.2 ... 3.2


def replace_between(path, marker, text):
    doc = open(path).read()
    pattern = rf"<!-- {marker} -->.*<!-- /{marker} -->"
    if not re.search(pattern, doc, flags=re.S):
        sys.exit(f"error: {path} has no <!-- {marker} --> ... <!-- /{marker} --> block")
    block = f"<!-- {marker} -->\n{text}<!-- /{marker} -->"
    open(path, "w").write(re.sub(pattern, lambda _: block, doc, flags=re.S))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    table = variant_runs.table_text(
        args.root,
        mean=True,
        json_path=os.path.join(ROOT, "benchmarks", "results", "mixed_quality.json"),
    ).splitlines()
    head = table[:2]
    rows = {line.split("|")[1].strip(): line for line in table[2:] if line.startswith("| ")}
    held = next(line for line in table if line.startswith("Held-out"))
    described = [line for line in table if line.startswith("- `")]

    out = ["### Every variant (mean ± std over the seeds run)", "", *head]
    out += [rows[v] for v in ORDER if v in rows] + ["", held, "", "What each row is:", ""]
    out += [line for line in described if line[3:].split("`")[0] in ORDER]
    out += ["", "### Per noise level (seed 0): held-out denoising error / train-held-out gap / "
            "distance to the training set's exact denoiser D*_S", ""]  # fmt: skip
    out.append("| run | " + " | ".join(f"sigma {s:.2g}" for s in LEVELS) + " |")
    out.append("|---|" + "---|" * len(LEVELS))
    for name in ORDER:
        path = os.path.join(args.root, f"{name}_seed0", "eval", "diagnose.json")
        if not os.path.exists(path):
            continue
        d = json.load(open(path))
        sigma = np.array(d["sigma"])
        cells = []
        for level in LEVELS:
            i = int(np.argmin(abs(sigma - level)))
            cells.append(
                f"{d['err_heldout'][i]:.3f} / {d['gap'][i]:.4f} / {d['dist_memorizing'][i]:.3f}"
            )
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    replace_between(os.path.join(ROOT, "docs", "mixed_quality.md"), "mixed-results",
                    "\n".join(out) + "\n")  # fmt: skip

    columns = [c.strip() for c in head[0].strip("|").split("|")]
    keep = [columns.index(c) for c in README_COLUMNS]
    short = ["| " + " | ".join(README_COLUMNS) + " |", "|---" * len(README_COLUMNS) + "|"]
    for name in README_ROWS:
        if name in rows:
            cells = [c.strip() for c in rows[name].strip().strip("|").split("|")]
            short.append("| " + " | ".join(cells[i] for i in keep) + " |")
    replace_between(os.path.join(ROOT, "README.md"), "mixed-readme", "\n".join(short) + "\n")
    print("\n".join(short))


if __name__ == "__main__":
    main()
