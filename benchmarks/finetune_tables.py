"""Write the fine-tuning study's tables (docs/finetune.md, the README's section) and its raw
results (benchmarks/results/finetune.json) from the runs that measured them (no figure typed).

    python benchmarks/finetune_tables.py --root=runs/finetune

Reads ROOT/pretrain and every finished ROOT/nN/ROW_seedS run of launch/reproduce_finetune.sh
(finished: its evaluation's metrics.json exists) and writes, between their markers in
docs/finetune.md: the pretraining (<!-- finetune-pretrain -->), every row as mean ± std over its
seeds (<!-- finetune-rows -->), the target check (<!-- finetune-target -->), the copy onset
tracked during fine-tuning (<!-- finetune-onset -->), the per-noise-level diagnosis
(<!-- finetune-levels -->) and each row's samples (<!-- finetune-samples -->); the rows again in
the README (<!-- finetune-readme -->); and the figures in docs/finetune/: each row's samples
(seed 0) and the onset curves.
"""

import argparse
import json
import os
import re
import sys

import numpy as np
from matplotlib.figure import Figure
from mixed_quality_tables import replace_between
from unet_tables import level_table

from ambient_jax import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "finetune.md")
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "finetune.json")
FIGURES = os.path.join(ROOT, "docs", "finetune")
ROWS = ("ddpm", "ambient", "noisy", "gated", "scratch")
RUN = re.compile(r"^(?P<row>[a-z]+(_[\d.]+)?)_seed(?P<seed>\d+)$")


def ordered(rows):
    """ROWS' order, a row's sigma_tn variants (noisy_1) after it by level."""
    key = lambda r: (ROWS.index(r.split("_")[0]), float(r.split("_")[1]) if "_" in r else 0.0)
    return sorted(rows, key=key)


def new_class(m):
    """The class the run was fine-tuned on (its data.classes, one class)."""
    return m["classes"][0]


# (column, value of one run's metrics, format)
COLUMNS = (
    ("new-class digits %", lambda m: m["confident_by_class"][new_class(m)], ".1f"),
    ("FD-digits", lambda m: m["fd_digits"], ".1f"),
    ("FD-pixel", lambda m: m["fd_pixel"], ".2f"),
    ("Inception FID (500)", lambda m: m["fid_inception_edm"], ".1f"),
    ("extraction %", lambda m: m["extraction_rate"], ".1f"),
    ("robust S>0.95 %", lambda m: m["robust_pixel_similarity"]["S>0.95"], ".1f"),
    ("train min", lambda m: m["train_min"], ".1f"),
)


def load_run(workdir):
    """The run's evaluation metrics, with its classes, tracking records and diagnosis added; None
    while it is not finished."""
    path = os.path.join(workdir, "eval", "metrics.json")
    if not os.path.exists(path):
        return None
    m = json.load(open(path))
    config = json.load(open(os.path.join(workdir, "config.json")))
    m["classes"] = list(config["data"]["classes"])
    rows = [
        json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()
    ]
    m["train_min"] = max(r["seconds"] for r in rows) / 60
    m["tracking"] = {r["step"]: r for r in rows if "track_extraction" in r}
    diagnosis = os.path.join(workdir, "eval", "diagnose.json")
    if os.path.exists(diagnosis):
        m["diagnosis"] = json.load(open(diagnosis))
    return m


def runs_of(root):
    """{n: {row: {seed: metrics}}} of the finished fine-tuning runs under root."""
    out = {}
    for folder in sorted(os.listdir(root)):
        if not re.fullmatch(r"n\d+", folder):
            continue
        for entry in sorted(os.listdir(os.path.join(root, folder))):
            match = RUN.match(entry)
            m = match and load_run(os.path.join(root, folder, entry))
            if m:
                n = int(folder[1:])
                out.setdefault(n, {}).setdefault(match["row"], {})[int(match["seed"])] = m
    return out


def _cell(values, fmt):
    v = np.asarray(values, float)
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"


def rows_table(runs):
    """Mean ± std of every measure, a line per (n, row)."""
    out = [
        "| n | row | seeds | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for n in sorted(runs):
        for row in ordered(runs[n]):
            ms = list(runs[n][row].values())
            cells = [_cell([get(m) for m in ms], fmt) for _, get, fmt in COLUMNS]
            out.append(f"| {n} | {row} | {len(ms)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def reference_levels(runs, n):
    """(any run's metrics at size n, the held-out digits' own levels as a phrase): the level of a
    model that does not copy, the same in every run of that size."""
    m = next(iter(next(iter(runs[n].values())).values()))
    return m, (
        f"extraction {m['heldout_extraction_rate']:.1f}%, robust S>0.95 "
        f"{m['heldout_robust_pixel_similarity']['S>0.95']:.1f}%, new-class digits "
        f"{m['heldout_confident_by_class'][new_class(m)]:.1f}%"
    )


def rows_text(runs):
    out = [rows_table(runs)]
    for n in sorted(runs):
        m, levels = reference_levels(runs, n)
        out.append(
            f"\nn = {n}: the held-out digits of class {new_class(m)} (never trained on, "
            f"{m['num_heldout_for_fd']} of them the FD reference), the level of a model that does "
            f"not copy: {levels}."
        )
    return "\n".join(out) + "\n"


README_ROWS = ("ddpm", "ambient", "noisy")  # the README's short table; the doc has every row


def readme_text(runs):
    """The rows table for the README: its main rows only, one reference line for all sizes."""
    short = {n: {r: by_row[r] for r in README_ROWS if r in by_row} for n, by_row in runs.items()}
    levels = [f"n = {n}: {reference_levels(runs, n)[1]}" for n in sorted(runs)]
    return f"{rows_table(short)}\n\nThe held-out digits' own levels: {'; '.join(levels)}.\n"


def target_text(runs):
    """The ambient and noisy-only rows against ddpm fine-tuning (means over seeds): new-class
    share within 5 points, FD-digits <= 1.1x, extraction <= 1/10, robust S>0.95 within one point
    of the held-out digits' level."""
    out = [
        "| n | row (seeds) | new-class digits, points below ddpm (<= 5) | "
        "FD-digits / ddpm (<= 1.1) | extraction / ddpm (<= 0.1) | "
        "robust S>0.95 % (held-out digits' level + 1) | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sorted(runs):
        if "ddpm" not in runs[n]:
            continue
        mean = lambda row, i: float(np.mean([COLUMNS[i][1](m) for m in runs[n][row].values()]))
        held = next(iter(runs[n]["ddpm"].values()))["heldout_robust_pixel_similarity"]["S>0.95"]
        for row in ordered(r for r in runs[n] if r.split("_")[0] in ("ambient", "noisy", "gated")):
            drop = mean("ddpm", 0) - mean(row, 0)
            fd = mean(row, 1) / mean("ddpm", 1)
            copy = mean(row, 4) / max(mean("ddpm", 4), 1e-9)
            robust = mean(row, 5)
            met = drop <= 5 and fd <= 1.1 and copy <= 0.1 and robust <= held + 1
            out.append(
                f"| {n} | {row} ({len(runs[n][row])}) | {drop:.1f} | {fd:.2f} | {copy:.2f} | "
                f"{robust:.1f} ({held + 1:.1f}) | {'yes' if met else 'no'} |"
            )
    return "\n".join(out) + "\n"


def onset_text(runs):
    """Extraction % of the 64 tracked samples at each tracking step, mean over seeds."""
    steps = sorted(
        {s for n in runs for r in runs[n].values() for m in r.values() for s in m["tracking"]}
    )
    out = [
        "| n | row | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for n in sorted(runs):
        for row in ordered(runs[n]):
            cells = []
            for s in steps:
                v = [
                    m["tracking"][s]["track_extraction"]
                    for m in runs[n][row].values()
                    if s in m["tracking"]
                ]
                cells.append(f"{np.mean(v):.1f}" if v else "")
            out.append(f"| {n} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def levels_text(runs):
    """Held-out error / train-held-out gap / globality at LEVELS, seed 0 of each row."""
    out = []
    for n in sorted(runs):
        curves = {
            row: runs[n][row][0]["diagnosis"]
            for row in ordered(runs[n])
            if 0 in runs[n][row] and "diagnosis" in runs[n][row][0]
        }
        if not curves:
            continue
        out += [f"n = {n}, seed 0:\n", *level_table(curves)]
        out.append("")
    return "\n".join(out)


def pretrain_text(root):
    """The pretraining run: its tracking (does it copy its own training set?) and its evaluation."""
    wd = os.path.join(root, "pretrain")
    m = load_run(wd)
    if m is None:
        return None, None
    out = [
        "| step | extraction % | robust extraction % | held-out reals' extraction % | "
        "gap at sigma 0.2 / 1 / 3 |",
        "|---|---|---|---|---|",
    ]
    for step, r in sorted(m["tracking"].items()):
        out.append(
            f"| {step} | {r['track_extraction']:.1f} | {r['track_robust_extraction']:.1f} | "
            f"{r['track_heldout_extraction']:.1f} | {r['track_gap_sigma0.2']:.4f} / "
            f"{r['track_gap_sigma1']:.4f} / {r['track_gap_sigma3']:.4f} |"
        )
    classes = m["classes"]
    out.append(
        f"\nIts {m['num_samples']} samples against its {m['num_train']} training digits (classes "
        f"{', '.join(map(str, classes))}) and {m['num_heldout_for_fd']} held-out ones: "
        f"extraction {m['extraction_rate']:.1f}% (held-out reals "
        f"{m['heldout_extraction_rate']:.1f}%), robust extraction "
        f"{m['robust_extraction_rate']:.1f}% ({m['heldout_robust_extraction_rate']:.1f}%), "
        f"confident digits {m['confident_digits']:.1f}% (held-out reals "
        f"{m['heldout_confident_digits']:.1f}%), FD-digits {m['fd_digits']:.1f} (training digits "
        f"against the held-out ones: {m['fd_digits_train_vs_heldout']:.1f}); training took "
        f"{m['train_min']:.1f} min. Samples read as the held-out class with confidence before "
        "any fine-tuning: "
        + ", ".join(
            f"{c}: {m['confident_by_class'][c]:.1f}%" for c in range(10) if c not in classes
        )
        + "."
    )
    return "\n".join(out) + "\n", m


def write_figures(root, runs, folder):
    """Per n: the first 64 samples of each row's seed 0 (samples_nN_ROW.png) and the tracked
    extraction of every row, mean over seeds, against the fine-tuning step (onset_nN.png)."""
    os.makedirs(folder, exist_ok=True)
    for n, by_row in runs.items():
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        for row in ordered(by_row):
            steps = sorted({s for m in by_row[row].values() for s in m["tracking"]})
            mean = [
                np.mean([m["tracking"][s]["track_extraction"] for m in by_row[row].values()
                         if s in m["tracking"]])
                for s in steps
            ]  # fmt: skip
            ax.plot(steps, mean, marker="o", label=f"{row} ({len(by_row[row])} seeds)")
            if 0 in by_row[row]:
                samples = np.load(os.path.join(root, f"n{n}", f"{row}_seed0", "samples.npz"))
                plots.save_grid(
                    samples["samples"][:64], os.path.join(folder, f"samples_n{n}_{row}.png"), 8
                )
        ax.set(xlabel="fine-tuning step", ylabel="extraction % (64 tracked samples)")
        ax.set_title(f"Copy onset while fine-tuning on n = {n}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, f"onset_n{n}.png"), dpi=100)


def samples_text(runs, folder):
    """A table of each row's sample grid (seed 0), per n, as write_figures draws them."""
    out = []
    for n, by_row in sorted(runs.items()):
        rows = [r for r in ordered(by_row) if 0 in by_row[r]]
        link = os.path.relpath(folder, os.path.dirname(DOC))
        out += [
            f"n = {n}, seed 0, the first 64 samples of each row:\n",
            "| " + " | ".join(rows) + " |",
            "|" + "---|" * len(rows),
            "| " + " | ".join(f"![{r}]({link}/samples_n{n}_{r}.png)" for r in rows) + " |",
            "",
        ]
    return "\n".join(out)


def run_seconds(workdir):
    """{stage: seconds} of one run of launch/reproduce_finetune.sh: training from the run's own
    clock (metrics.jsonl, which a resumed run continues), the other stages from their records
    (RUN/stages/STAGE.json)."""
    out = {}
    folder = os.path.join(workdir, "stages")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.endswith(".json"):
            out[name[: -len(".json")]] = json.load(open(os.path.join(folder, name)))["seconds"]
    log = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(log):
        clock = [json.loads(line).get("seconds", 0) for line in open(log) if line.strip()]
        out["train"] = max(out.get("train", 0), max(clock, default=0))
    return out


def cost_text(root):
    """What the study cost, measured: pretraining, and the mean fine-tuning run with and without
    its per-noise-level diagnosis, summed over every finished run."""
    pretrain = run_seconds(os.path.join(root, "pretrain"))
    runs = [
        run_seconds(os.path.join(root, folder, entry))
        for folder in sorted(os.listdir(root))
        if re.fullmatch(r"n\d+", folder)
        for entry in sorted(os.listdir(os.path.join(root, folder)))
        if os.path.exists(os.path.join(root, folder, entry, "eval", "metrics.json"))
    ]
    if not runs:
        return ""
    total = sum(pretrain.values()) + sum(sum(r.values()) for r in runs)
    per_run = np.mean([sum(v for k, v in r.items() if k != "diagnose") for r in runs])
    diagnose = [r["diagnose"] for r in runs if "diagnose" in r]
    hours, pretrain_min = total / 3600, sum(pretrain.values()) / 60
    diagnose_min = np.mean(diagnose) / 60 if diagnose else 0.0
    return (
        f"\nMeasured on this machine's 2 CPU cores (each run's clock): {hours:.1f} h in all, "
        f"pretraining {pretrain_min:.0f} min, then {len(runs)} fine-tuning runs of "
        f"{per_run / 60:.1f} min each to train, sample and evaluate (seed 0's diagnosis "
        f"{diagnose_min:.1f} min more).\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--doc", default=DOC)
    parser.add_argument("--readme", default=README)
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--figures", default=FIGURES)
    args = parser.parse_args()
    pretrain, pretrain_metrics = pretrain_text(args.root)
    if pretrain is None:
        sys.exit(f"error: {args.root}/pretrain has no evaluation yet (run ambient-eval on it)")
    runs = runs_of(args.root)
    replace_between(args.doc, "finetune-pretrain", pretrain)
    raw = {"pretrain": pretrain_metrics}
    if runs:
        table = rows_text(runs)
        replace_between(args.doc, "finetune-rows", table)
        replace_between(args.doc, "finetune-target", target_text(runs))
        replace_between(args.doc, "finetune-onset", onset_text(runs))
        replace_between(args.doc, "finetune-levels", levels_text(runs))
        replace_between(args.doc, "finetune-samples", samples_text(runs, FIGURES))
        replace_between(args.readme, "finetune-readme", readme_text(runs) + cost_text(args.root))
        write_figures(args.root, runs, args.figures)
        for n, by_row in runs.items():
            for row, by_seed in by_row.items():
                for seed, m in by_seed.items():
                    raw[f"n{n}_{row}_seed{seed}"] = m
        print(table)
    with open(args.results, "w") as f:
        json.dump(raw, f, indent=1, default=str)


if __name__ == "__main__":
    main()
