"""Write the U-Net tables of docs/ambient_quality.md (section 6) from the runs that measured them
(no figure typed by hand).

    python benchmarks/unet_tables.py --root=runs/unet30                    # 16x16, unet_* rows
    python benchmarks/unet_tables.py --root=runs/unet32 --network=unet32   # 32x32, unet32_* rows

Reads every finished run under --root (the NETWORK_* rows of ambient-sweep variants, run with
--set=--config.data.n_train=30), writes --results (raw metrics and per-noise-level curves;
default benchmarks/results/unet30_variants.json or unet32_variants.json) and, between their
markers in docs/ambient_quality.md: every run (<!-- NETWORK-variants -->), memorization tracked
during training and the per-noise-level diagnosis of each seed-0 run (<!-- NETWORK-levels -->),
and, once some row has several seeds, their mean ± std (<!-- NETWORK-seeds -->) and each such row
against the target of the study (<!-- NETWORK-target -->).
"""

import argparse
import json
import os
import sys

import ml_collections
import numpy as np
from mixed_quality_tables import replace_between

from ambient_jax.diffusion import losses
from ambient_jax.programs import variant_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "ambient_quality.md")
LEVELS = (0.2004, 0.5036, 1.266, 3.18, 7.99)  # diagnose.py's grid points nearest 0.2 ... 8
# each network's rows (configs/variants.py's NETWORK_* names), the default file of their results
RESULTS = {"unet": "unet30_variants.json", "unet32": "unet32_variants.json"}


def target_text(root, network="unet"):
    """Each ambient row run with several seeds against issue 24's target, as ratios to ddpm's
    means: FD-pixel and FD-digits <= 1.1x, Inception FID <= 1.2x, confident digits within 5
    points, extraction <= 1/10, robust S>0.95 at the held-out reals' level."""
    runs = {}
    for name, _, m in variant_runs.rows(root):
        runs.setdefault(name, []).append(m)
    reference = f"{network}_ddpm"
    mean = lambda name, get: float(np.mean([get(m) for m in runs[name]]))
    get = {name: g for name, g, _ in variant_runs.COLUMNS}
    ddpm = {c: mean(reference, g) for c, g in get.items()}
    held = runs[reference][0]["heldout_robust_pixel_similarity"]["S>0.95"]
    out = [
        "| row (mean over its seeds) | FD-pixel / ddpm (<= 1.1) | FD-digits / ddpm (<= 1.1) | "
        "Inception FID / ddpm (<= 1.2) | confident digits, points below ddpm (<= 5) | "
        "extraction / ddpm (<= 0.1) | robust S>0.95 % (held-out reals: "
        f"{held:.1f}) | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(runs):
        if name == reference or len(runs[name]) < 2:
            continue
        r = {c: mean(name, g) for c, g in get.items()}
        ratios = [r[c] / ddpm[c] for c in ("FD-pixel", "FD-digits", "Inception FID (500)")]
        drop = ddpm["confident digits %"] - r["confident digits %"]
        copy = r["extraction %"] / ddpm["extraction %"]
        robust = r["robust S>0.95 %"]
        met = (
            ratios[0] <= 1.1 and ratios[1] <= 1.1 and ratios[2] <= 1.2 and drop <= 5
            and copy <= 0.1 and robust <= held + 1.0
        )  # fmt: skip
        out.append(
            f"| {name} ({len(runs[name])}) | "
            + " | ".join(f"{x:.2f}" for x in ratios)
            + f" | {drop:.1f} | {copy:.2f} | {robust:.1f} | {'yes' if met else 'no'} |"
        )
    return "\n".join(out) + "\n"


def seed0_runs(root, network="unet"):
    """NETWORK_ddpm first, then the other NETWORK_* runs of seed 0, by name."""
    names = sorted(e[: -len("_seed0")] for e in os.listdir(root) if e.endswith("_seed0"))
    names = [n for n in names if n.startswith(network + "_")]
    return sorted(names, key=lambda n: (n != f"{network}_ddpm", n))


def levels_text(root, network="unet"):
    """Two tables, one row per seed-0 run: memorization tracked during training, and the
    per-noise-level diagnosis; each row says where its ambient branch starts (the reading
    compares the runs by which branch holds sigma 1.27)."""
    names = [n for n in seed0_runs(root, network) if os.path.exists(_diagnosis(root, n))]
    short = lambda name: name[len(network) + 1 :]
    curves = {n: json.load(open(_diagnosis(root, n))) for n in names}
    tracked = {n: _tracked(root, n) for n in names}
    branch = {n: _branch_start(root, n) for n in names}
    extraction = {n: m["extraction_rate"] for n, s, m in variant_runs.rows(root) if s == 0}
    steps = sorted({s for t in tracked.values() for s in t})
    out = [
        "Memorization tracked during training (seed 0; the same 64 samples each time; "
        "extraction %), and the extraction of the run's 1,000 samples at the end:",
        "",
        "| run | ambient branch from sigma | "
        + " | ".join(f"step {s:,}" for s in steps)
        + " | 1,000 samples |",
        "|---|---|" + "---|" * (len(steps) + 1),
    ]
    for n in names:
        cells = [f"{tracked[n][s]:.1f}" if s in tracked[n] else "" for s in steps]
        out.append(
            f"| {short(n)} | {branch[n]} | " + " | ".join(cells) + f" | {extraction[n]:.1f} |"
        )
    out += [
        "",
        "Per noise level (seed 0, `ambient-diagnose`): held-out error / train-held-out gap / "
        "globality at each sigma; n_eff (the number of training digits the exact denoiser D*_S "
        "averages there) from the data:",
        "",
        *level_table(
            {short(n): c for n, c in curves.items()},
            ("ambient branch from sigma", {short(n): branch[n] for n in names}),
        ),
    ]
    return "\n".join(out) + "\n"


def level_table(curves, extra=None):
    """The lines of a per-noise-level table, a row per run of `curves` ({label: its diagnosis});
    each cell held-out error / train-held-out gap / globality at the diagnosis grid point nearest
    each of LEVELS, headed by that sigma and its n_eff; `extra` = (column name, {label: cell}) puts
    one more column after the label."""
    first = next(iter(curves.values()))
    sigma, n_eff = np.array(first["sigma"]), first["effective_train_images"]
    points = [int(np.argmin(abs(sigma - level))) for level in LEVELS]
    name, cells = extra or ("", {})
    out = [
        "| run | "
        + (f"{name} | " if extra else "")
        + " | ".join(f"sigma {sigma[i]:.3g} (n_eff {n_eff[i]:.3g})" for i in points)
        + " |",
        "|---|" + ("---|" if extra else "") + "---|" * len(points),
    ]
    for label, c in curves.items():
        values = [
            f"{c['err_heldout'][i]:.3f} / {c['gap'][i]:.3f} / {c['globality'][i]:.2f}"
            for i in points
        ]
        lead = f"| {label} | " + (f"{cells[label]} | " if extra else "")
        out.append(lead + " | ".join(values) + " |")
    return out


def _branch_start(root, name):
    """Where the run's ambient branch starts (losses.branch_start), or - for plain denoising."""
    loss = json.load(open(os.path.join(root, f"{name}_seed0", "config.json")))["loss"]
    if loss["objective"] != "ambient":
        return "-"
    return f"{losses.branch_start(ml_collections.ConfigDict(loss)):.3g}"


def _diagnosis(root, name):
    return os.path.join(root, f"{name}_seed0", "eval", "diagnose.json")


def _tracked(root, name):
    log = open(os.path.join(root, f"{name}_seed0", "metrics.jsonl")).read().splitlines()
    rows = [json.loads(line) for line in log if line.strip()]
    return {r["step"]: r["track_extraction"] for r in rows if "track_extraction" in r}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument(
        "--network",
        choices=tuple(RESULTS),
        default="unet",
        help="whose rows: unet_* (16x16, configs/mnist_unet.py) or unet32_* (32x32)",
    )
    parser.add_argument(
        "--results", help="the raw results' file (default benchmarks/results/unet30_variants.json "
        "or unet32_variants.json)",
    )  # fmt: skip
    args = parser.parse_args()
    net = args.network
    json_path = args.results or os.path.join(ROOT, "benchmarks", "results", RESULTS[net])
    names = {name for name, _, _ in variant_runs.rows(args.root)}
    if f"{net}_ddpm" not in names or any(not n.startswith(net + "_") for n in names):
        sys.exit(
            f"error: {args.root} must hold finished {net}_* runs only, {net}_ddpm among them "
            f"(found {sorted(names)}); choose --network or --root to match"
        )
    every = variant_runs.table_text(args.root, json_path=json_path)
    replace_between(DOC, f"{net}-variants", every + "\n")
    replace_between(DOC, f"{net}-levels", levels_text(args.root, net))
    means = variant_runs.table_text(args.root, mean=True).splitlines()
    several = [
        line for line in means[2:] if line.startswith("| ") and line.split("|")[2].strip() != "1"
    ]
    if several:
        replace_between(DOC, f"{net}-seeds", "\n".join(means[:2] + several) + "\n")
        replace_between(DOC, f"{net}-target", target_text(args.root, net))
    print(every)


if __name__ == "__main__":
    main()
