"""Write the mixed-quality tables from the runs that measured them (no figure typed by hand).

    python benchmarks/mixed_quality_tables.py --root=runs/mixed
    python benchmarks/mixed_quality_tables.py --root=runs/omni     # the omni_* rows

Reads every finished run under --root (the mixed-quality rows of ambient-sweep variants), writes
benchmarks/results/mixed_quality.json (raw metrics and per-noise-level curves), the full table
and the per-noise-level rows between the `<!-- mixed-results -->` markers of
docs/mixed_quality.md, and the short table between the `<!-- mixed-readme -->` markers of
README.md (rebuilt from both raw files). The omni_* rows (other classes' digits below their
sigma_max) go to benchmarks/results/omni.json (a record: runs under --root replace their entries,
the others stay), the `<!-- omni-results -->` block and the README's table.
"""

import argparse
import json
import os
import re
import sys

import numpy as np

from ambient_jax import plots
from ambient_jax.configs.mnist_unet import get_config
from ambient_jax.data import load_split
from ambient_jax.eval import locality
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


OMNI_ORDER = ("omni_clean_only", "omni_as_target", "omni_fixed", "omni_fixed_0.2",
              "omni_fixed_share", "omni_crops", "omni_crops_ambient")  # fmt: skip
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
    """The omni_* rows: mean ± std over seeds, the held-out reference, the per-level diagnosis.

    benchmarks/results/omni.json is the record: a run finished under root replaces its entry
    there, and the entries of runs that are not under root (measured under another root, or in a
    folder since deleted) stay, so the tables always show every run recorded.
    """
    path = os.path.join(ROOT, "benchmarks", "results", "omni.json")
    raw = json.load(open(path)) if os.path.exists(path) else {}
    for name, seed, m in variant_runs.rows(root):
        if name not in OMNI_ORDER:
            continue
        diagnosis = os.path.join(root, f"{name}_seed{seed}", "eval", "diagnose.json")
        raw[f"{name}_seed{seed}"] = dict(
            m, diagnosis=json.load(open(diagnosis)) if os.path.exists(diagnosis) else None
        )
    raw = dict(sorted(raw.items()))
    with open(path, "w") as f:
        json.dump(raw, f, indent=1)
    found = [(key.rsplit("_seed", 1)[0], int(key.rsplit("_seed", 1)[1]), m)
             for key, m in raw.items()]  # fmt: skip
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
    # every run holds out the same digits; runs evaluated before the held-out leakage was written
    # out lack it, so the reference comes from one that has it
    ref = next((m for *_, m in found if "heldout_leakage" in m), found[0][2])
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
    out += ["", "Per noise level (mean ± std over the seeds diagnosed): the held-out - train gap "
            "/ the globality G of the 8x8 window (diagnose.py's G)", ""]  # fmt: skip
    out.append("| run | seeds | " + " | ".join(f"sigma {s:.2g}" for s in LEVELS) + " |")
    out.append("|---|---|" + "---|" * len(LEVELS))
    for name in OMNI_ORDER:
        ds = [m["diagnosis"] for n, _, m in found if n == name and m.get("diagnosis")]
        if not ds:
            continue
        at = [[int(np.argmin(abs(np.array(d["sigma"]) - level))) for level in LEVELS] for d in ds]
        cells = [
            _cell([d["gap"][i[j]] for d, i in zip(ds, at)], ".4f")
            + " / "
            + _cell([d["globality"][i[j]] for d, i in zip(ds, at)], ".2f")
            for j in range(len(LEVELS))
        ]
        out.append(f"| {name} | {len(ds)} | " + " | ".join(cells) + " |")
    replace_between(os.path.join(ROOT, "docs", "mixed_quality.md"), "omni-results",
                    "\n".join(out) + "\n")  # fmt: skip
    print("\n".join(out))
    omni_figures(root, [n for n in OMNI_ORDER if n in rows])
    omni_annotation_blocks(root)
    write_readme()


MAP_LEVELS = (0.2, 0.504, 0.798, 1.27, 2.01, 3.18, 8.0, 80.0)  # points of diagnose.sigma_grid()


def omni_annotation_blocks(root):
    """The map's measurement (G_w per level for the Gaussian of the 100 target digits and for the
    annotation's trained network, and the map of each) and the annotation's counts and accuracy."""
    path = os.path.join(root, "annotations", "crops.json")
    if not os.path.exists(path):
        return
    how = json.load(open(path))["how"]
    sigmas = np.array(how["map"]["levels"])
    sizes = [int(w) for w in how["map"]["globality"]]
    c = get_config("ddpm")
    c.data.classes = TARGET
    train = load_split(c.data).train
    gaussian = locality.window_globality(locality.gaussian_denoiser(train), train, sizes, sigmas)
    trained = {int(w): g for w, g in how["map"]["globality"].items()}
    tau = how["map"]["tau"]
    at = [int(np.argmin(abs(sigmas - level))) for level in MAP_LEVELS]
    head = "| denoiser | crop w | " + " | ".join(f"G_w at {sigmas[i]:.3g}" for i in at)
    lines = [head + " | sigma_max(w) |", "|---" * (len(at) + 3) + "|"]
    for label, g in (("Gaussian of the 100 digits", gaussian), ("trained U-Net", trained)):
        levels = locality.crop_levels(g, sigmas, train.shape[1], tau)
        for w in sizes:
            cells = " | ".join(f"{g[w][i]:.2f}" for i in at)
            lines.append(f"| {label} | {w} | {cells} | {levels[w]:.3g} |")
    replace_between(os.path.join(ROOT, "docs", "mixed_quality.md"), "omni-map",
                    "\n".join(lines) + "\n")  # fmt: skip
    counts = how["crops"]["passing_size_counts"]
    levels = how["crops"]["size_levels"]
    text = ["![annotation](mixed/omni_annotation.png)", "",
            "| largest passing crop | " + " | ".join(
                "none" if w == "0" else f"{w}x{w}" for w in counts) + " |",
            "|---" * (len(counts) + 1) + "|",
            "| sigma_max | " + " | ".join(
                "0.002" if w == "0" else f"{levels[w] or float('inf'):.3g}" for w in counts) + " |",
            "| digits of 5-9 | " + " | ".join(str(v) for v in counts.values()) + " |"]  # fmt: skip
    accuracy = os.path.join(ROOT, "benchmarks", "results", "crops_accuracy.json")
    if os.path.exists(accuracy):
        a = json.load(open(accuracy))
        text += ["", "Accuracy (`benchmarks/crops_accuracy.py`: the same recipe trained again, "
                 "not bit for bit the annotation's classifiers, whose counts above differ by a few "
                 "percent; asked on the 2,500 digits of 5-9 and on 1,000 held-out digits of 0-4 "
                 "that no classifier saw):", "",
                 "| crop w | ROC AUC | 5-9 passing % | held-out 0-4 passing % |",
                 "|---|---|---|---|"]  # fmt: skip
        for w, r in a["per_size"].items():
            text.append(
                f"| {w} | {r['auc']:.3f} | {r['passing_other_pct']:.1f} | "
                f"{r['passing_heldout_target_pct']:.1f} |"
            )
        mean = lambda d: sum(int(w) * n for w, n in d.items()) / sum(d.values())
        target, other = mean(a["passing_size_heldout_target"]), mean(a["passing_size_other"])
        text += [
            "",
            f"Largest passing crop, mean: held-out 0-4 {target:.1f} pixels, 5-9 {other:.1f}. Over "
            "all (0-4, 5-9) pairs, P(the 0-4 digit passes at the larger size) - P(the reverse) = "
            f"{a['pairs_target_larger_minus_reverse']:.2f}.",
        ]
    replace_between(os.path.join(ROOT, "docs", "mixed_quality.md"), "omni-annotation",
                    "\n".join(text) + "\n")  # fmt: skip


def omni_figures(root, names):
    """docs/mixed/omni_ROW.png: the first 64 samples of each row's seed 0; and, where the root
    holds the crops annotation, docs/mixed/omni_annotation.png: how many of the other digits pass
    at each crop size (the level each size maps to in its label)."""
    folder = os.path.join(ROOT, "docs", "mixed")
    os.makedirs(folder, exist_ok=True)
    for name in names:
        path = os.path.join(root, f"{name}_seed0", "samples.npz")
        if os.path.exists(path):
            samples = np.load(path)["samples"][:64]
            plots.save_grid(samples, os.path.join(folder, f"{name}.png"), 8)
    annotation = os.path.join(root, "annotations", "crops.json")
    if not os.path.exists(annotation):
        return
    crops = json.load(open(annotation))["how"]["crops"]
    counts = crops["passing_size_counts"]
    top = lambda w: crops["size_levels"][w]  # None: a whole image, unbounded
    labels = [
        "fails at the\nsmallest (0.002)" if w == "0" else f"{w}x{w}\n({top(w) or float('inf'):.3g})"
        for w in counts
    ]
    plots.save_bars(
        labels, list(counts.values()), os.path.join(folder, "omni_annotation.png"),
        "largest crop size that passes (its sigma_max)", "digits of 5-9",
    )  # fmt: skip


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
