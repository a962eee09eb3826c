"""Write the mixed-quality tables from the runs that measured them (no figure typed by hand).

    python benchmarks/mixed_quality_tables.py --root=runs/mixed
    python benchmarks/mixed_quality_tables.py --root=runs/omni     # the omni_* rows

Reads every finished run under --root (the mixed-quality rows of ambient-sweep variants), writes
benchmarks/results/mixed_quality.json (raw metrics and per-noise-level curves), the full table
and the per-noise-level rows between the `<!-- mixed-results -->` markers of
docs/mixed_quality.md, and the short table between the `<!-- mixed-readme -->` markers of
README.md (rebuilt from both raw files). The omni_* rows (other classes' digits below their
sigma_max) go to benchmarks/results/omni.json, the `<!-- omni-results -->` block and the README's
table.
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
README_COLUMNS = ("variant", "seeds", "FD-pixel", "FD-digits", "confident digits %", "extraction %",
                  "leakage (5-9) %")  # fmt: skip
LEVELS = (0.2004, 0.5036, 1.266, 2.006, 3.18)  # diagnose.py's grid points nearest 0.2 ... 3.2


def replace_between(path, marker, text):
    doc = open(path).read()
    pattern = rf"<!-- {marker} -->.*<!-- /{marker} -->"
    if not re.search(pattern, doc, flags=re.S):
        sys.exit(f"error: {path} has no <!-- {marker} --> ... <!-- /{marker} --> block")
    block = f"<!-- {marker} -->\n{text}<!-- /{marker} -->"
    open(path, "w").write(re.sub(pattern, lambda _: block, doc, flags=re.S))


OMNI_ORDER = ("omni_clean_only", "omni_as_target", "omni_fixed", "omni_crops",
              "omni_crops_ambient")  # fmt: skip
TARGET = (0, 1, 2, 3, 4)


def _leakage(m):
    """% of samples read as a class outside the target (from the class histogram of runs
    evaluated before the measure was written out)."""
    if "leakage" in m:
        return m["leakage"]
    hist = np.array(m["class_histogram"], float)
    return 100 * hist[[c for c in range(10) if c not in TARGET]].sum() / hist.sum()


def _confident_target(m):
    if "confident_target_digits" in m:
        return m["confident_target_digits"]
    return sum(m["confident_by_class"][c] for c in TARGET)


OMNI_COLUMNS = (
    ("FD-pixel", lambda m: m["fd_pixel"], ".2f"),
    ("FD-digits", lambda m: m["fd_digits"], ".1f"),
    ("leakage (5-9) %", _leakage, ".1f"),
    ("confident 0-4 %", _confident_target, ".1f"),
    ("extraction %", lambda m: m["extraction_rate"], ".1f"),
    ("robust S>0.95 %", lambda m: m["robust_pixel_similarity"]["S>0.95"], ".1f"),
    ("train min", lambda m: m["train_min"], ".1f"),
)


def omni_tables(root):
    """The omni_* rows: mean ± std over seeds, the held-out reference, the per-level diagnosis."""
    found = [(n, seed, m) for n, seed, m in variant_runs.rows(root) if n in OMNI_ORDER]
    raw = {}
    for name, seed, m in found:
        diagnosis = os.path.join(root, f"{name}_seed{seed}", "eval", "diagnose.json")
        raw[f"{name}_seed{seed}"] = dict(
            m, diagnosis=json.load(open(diagnosis)) if os.path.exists(diagnosis) else None
        )
    with open(os.path.join(ROOT, "benchmarks", "results", "omni.json"), "w") as f:
        json.dump(raw, f, indent=1)
    head = ["| variant | seeds | " + " | ".join(c[0] for c in OMNI_COLUMNS) + " |",
            "|---" * (len(OMNI_COLUMNS) + 2) + "|"]  # fmt: skip
    rows = {}
    for name in OMNI_ORDER:
        ms = [m for n, _, m in found if n == name]
        if not ms:
            continue
        cells = []
        for _, get, fmt in OMNI_COLUMNS:
            v = np.array([get(m) for m in ms], float)
            cells.append(
                f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"
            )
        rows[name] = f"| {name} | {len(ms)} | " + " | ".join(cells) + " |"
    ref = found[0][2]
    robust = ref["heldout_robust_pixel_similarity"]["S>0.95"]
    held = (
        "Held-out digits of 0-4 (never trained on): extraction "
        f"{ref['heldout_extraction_rate']:.1f}%, robust S>0.95 {robust:.1f}%, leakage "
        f"{ref.get('heldout_leakage', float('nan')):.1f}%, confident 0-4 "
        f"{ref.get('heldout_confident_target_digits', float('nan')):.1f}%; FD-digits of "
        f"{ref['num_other_heldout']} other held-out 0-4 digits "
        f"{ref['fd_digits_heldout_vs_heldout']:.1f}, of the 100 training digits "
        f"{ref['fd_digits_train_vs_heldout']:.1f}."
    )
    out = [*head, *rows.values(), "", held, ""]
    out += [f"- `{n}`: {variant_runs.VARIANTS[n][2]}" for n in OMNI_ORDER if n in rows]
    out += ["", "Per noise level (seed 0): train / held-out gap / globality of the 8x8 window "
            "(diagnose.py's G)", ""]  # fmt: skip
    out.append("| run | " + " | ".join(f"sigma {s:.2g}" for s in LEVELS) + " |")
    out.append("|---|" + "---|" * len(LEVELS))
    for name in OMNI_ORDER:
        d = raw.get(f"{name}_seed0", {}).get("diagnosis")
        if not d:
            continue
        sigma = np.array(d["sigma"])
        at = [int(np.argmin(abs(sigma - level))) for level in LEVELS]
        cells = [f"{d['gap'][i]:.4f} / {d['globality'][i]:.2f}" for i in at]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    replace_between(os.path.join(ROOT, "docs", "mixed_quality.md"), "omni-results",
                    "\n".join(out) + "\n")  # fmt: skip
    print("\n".join(out))
    write_readme()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    if any(name in OMNI_ORDER for name, _, _ in variant_runs.rows(args.root)):
        omni_tables(args.root)
        return
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

    write_readme()


def _cell(values, fmt):
    v = np.array(values, float)
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"


def write_readme():
    """README's mixed-quality table: the corrupted-data rows (mixed_quality.json) and the
    other-classes rows (omni.json), each the mean ± std of its seeds; confident digits are the
    target's (0-4) for the omni rows, leakage theirs alone."""
    short = ["| " + " | ".join(README_COLUMNS) + " |", "|---" * len(README_COLUMNS) + "|"]
    for file, names, confident in (
        ("mixed_quality.json", README_ROWS, lambda m: m["confident_digits"]),
        ("omni.json", OMNI_ORDER, _confident_target),
    ):
        path = os.path.join(ROOT, "benchmarks", "results", file)
        raw = json.load(open(path)) if os.path.exists(path) else {}
        for name in names:
            ms = [m for key, m in raw.items() if key.rsplit("_seed", 1)[0] == name]
            if not ms:
                continue
            cells = [
                name,
                str(len(ms)),
                _cell([m["fd_pixel"] for m in ms], ".2f"),
                _cell([m["fd_digits"] for m in ms], ".2f"),
                _cell([confident(m) for m in ms], ".1f"),
                _cell([m["extraction_rate"] for m in ms], ".1f"),
                _cell([_leakage(m) for m in ms], ".1f") if file == "omni.json" else "-",
            ]
            short.append("| " + " | ".join(cells) + " |")
    replace_between(os.path.join(ROOT, "README.md"), "mixed-readme", "\n".join(short) + "\n")
    print("\n".join(short))


if __name__ == "__main__":
    main()
