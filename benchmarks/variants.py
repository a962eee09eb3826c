"""Candidate fixes for the ambient model's sample quality, measured side by side at equal budget.

    python benchmarks/variants.py run --root=runs/variants --variants=ddpm,rescaled --seeds=0
    python benchmarks/variants.py table --root=runs/variants > docs/variants.md
    python benchmarks/variants.py table --root=runs/variants --json=raw.json   # + raw results
    python benchmarks/variants.py run --root=runs/unet --variants=unet_ddpm,unet_edm_0.5 \
        --set=--config.data.n_train=30 --set=--config.train.num_steps=4000
    # on an accelerator: 12 runs at once, training, sampling and diagnosis only; then evaluate
    # where the Inception and digit-classifier weights are cached
    python benchmarks/variants.py run --root=runs/unet32 --variants=unet32_ddpm,unet32_edm_1.5 \
        --seeds=0,1 --jobs=12 --stages=train,sample,diagnose
    python benchmarks/variants.py run --root=runs/unet32 --variants=... --stages=eval

Every variant trains configs/mnist.py (100 digits at 16x16, 3,000 steps of batch 128, the
quickstart's budget) with its own overrides, draws 1,000 samples (seed 1), and is evaluated with
`ambient-eval --fid --fid_samples=500` (pixel metrics on all 1,000 samples, Inception FID on the
first 500 against 500 held-out digits) and `ambient-diagnose`. A run already evaluated is skipped.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

from ambient_jax.diffusion.losses import gate_ratio

BIN = os.path.dirname(sys.executable)
CONFIG = "configs/mnist.py"

# The settings every variant starts from (the previous default of configs/mnist.py), so a
# variant means the same run whatever the default is now; its own overrides come after.
BASE = [
    "--config.loss.sigma_tn=1.5",
    "--config.loss.weighting=rescaled",
    "--config.loss.ambient_fraction=0",
    "--config.model.split_sigma=0",
    "--config.model.split_low_preset=",
    "--config.ema.rampup_ratio=0.05",
]

# name: (objective, overrides, what it tests)
VARIANTS = {
    "ddpm": ("ddpm", [], "plain denoising (reference)"),
    "default": ("ambient", [], "configs/mnist.py's ambient default as it stands"),
    "edm_1.5": ("ambient", ["--config.loss.weighting=edm"], "the paper's EDM weight, sigma_tn 1.5"),
    "rescaled_1.5": (
        "ambient",
        [],
        "rescaled weight, sigma_tn 1.5: the default of configs/mnist.py",
    ),
    "cap4_1.5": ("ambient", ["--config.loss.rescale_cap=4"], "rescaled weight capped at 4"),
    "cap16_1.5": ("ambient", ["--config.loss.rescale_cap=16"], "rescaled weight capped at 16"),
    "switch2_1.5": (
        "ambient",
        ["--config.loss.sigma_switch=2.0"],
        "rescaled, ambient branch from sigma 2.0 (clean below)",
    ),
    "switch3_1.5": (
        "ambient",
        ["--config.loss.sigma_switch=3.0"],
        "rescaled, ambient branch from sigma 3.0 (clean below)",
    ),
    "edm_switch2_1.5": (
        "ambient",
        ["--config.loss.weighting=edm", "--config.loss.sigma_switch=2.0"],
        "EDM weight, ambient branch from sigma 2.0",
    ),
    "rescaled_0.7": ("ambient", ["--config.loss.sigma_tn=0.7"], "rescaled weight, sigma_tn 0.7"),
    "switch1.5_1.0": (
        "ambient",
        ["--config.loss.sigma_tn=1.0", "--config.loss.sigma_switch=1.5"],
        "copies at sigma 1.0, ambient branch from 1.5",
    ),
    "ema_long": (
        "ambient",
        ["--config.ema.rampup_ratio=0.3"],
        "rescaled 1.5, EMA half-life 50 kimg from the start",
    ),
    "normalized_1.5": (
        "ambient",
        ["--config.loss.weighting=normalized"],
        "inverse-variance weight of the ambient rows, sigma_tn 1.5",
    ),
    "normalized_1.5_ema": (
        "ambient",
        ["--config.loss.weighting=normalized", "--config.ema.rampup_ratio=0.3"],
        "inverse-variance weight, EMA half-life 50 kimg from the start",
    ),
    "normalized_frac0.5": (
        "ambient",
        ["--config.loss.weighting=normalized", "--config.loss.ambient_fraction=0.5"],
        "inverse-variance weight, half the rows on the ambient branch",
    ),
    "rescaled_frac0.5": (
        "ambient",
        ["--config.loss.ambient_fraction=0.5"],
        "rescaled weight, half the rows ambient",
    ),
    "split_normalized_frac0.5": (
        "ambient",
        [
            "--config.model.split_sigma=-1",
            "--config.loss.weighting=normalized",
            "--config.loss.ambient_fraction=0.5",
        ],
        "two networks split at sigma_tn, inverse-variance weight, half the rows ambient",
    ),
    "split_normalized_frac0.5_s3": (
        "ambient",
        [
            "--config.model.split_sigma=-1",
            "--config.loss.weighting=normalized",
            "--config.loss.ambient_fraction=0.5",
            "--config.loss.sigma_tn=3",
        ],
        "two networks split at sigma_tn 3, inverse-variance weight, half the rows ambient",
    ),
    "split_normalized_frac0.5_s5": (
        "ambient",
        [
            "--config.model.split_sigma=-1",
            "--config.loss.weighting=normalized",
            "--config.loss.ambient_fraction=0.5",
            "--config.loss.sigma_tn=5",
        ],
        "two networks split at sigma_tn 5, inverse-variance weight, half the rows ambient",
    ),
    "localcnn_normalized_frac0.5": (
        "ambient",
        [
            "--config.model.split_sigma=-1",
            "--config.model.split_low_preset=local_cnn",
            "--config.loss.weighting=normalized",
            "--config.loss.ambient_fraction=0.5",
        ],
        "MLP above sigma_tn 1.5, local CNN below; inverse-variance weight, half the rows ambient",
    ),
    "localcnn_ddpm": (
        "ddpm",
        ["--config.model.split_sigma=1.5", "--config.model.split_low_preset=local_cnn"],
        "plain denoising with the same split network (MLP above 1.5, local CNN below)",
    ),
    "split_rescaled": (
        "ambient",
        ["--config.model.split_sigma=-1"],
        "two networks split at sigma_tn, rescaled weight",
    ),
    "steps6k": (
        "ambient",
        ["--config.train.num_steps=6000"],
        "rescaled 1.5, twice the steps (twice the budget)",
    ),
}

# The U-Net grid (configs/mnist_unet.py): ddpm, and the ambient objective at four sigma_tn with
# the paper's weight ("edm": its code regresses the prediction of x_tn with EDM's weight), the
# rescaled and the inverse-variance weights, and the gate of the group's later code (Ambient
# Diffusion Omni: the EDM weight on the x0 error, i.e. "rescaled", used on the ambient branch only
# for sigma > sigma_tn sqrt(1 + 1 / (s_max - 1)), s_max = 4, here plus a buffer of 0.05).
UNET_CONFIG = "configs/mnist_unet.py"
GATE = gate_ratio(4)  # 1.1547


def weighted(network, weighting, sigma_tn):
    """The ambient variant of `network` (its words: "U-Net", "32x32 U-Net") with one weighting
    and sigma_tn."""
    return (
        "ambient",
        [f"--config.loss.weighting={weighting}", f"--config.loss.sigma_tn={sigma_tn:g}"],
        f"{network}, {weighting} weight, sigma_tn {sigma_tn:g}",
    )


UNET_VARIANTS = {"unet_ddpm": ("ddpm", [], "plain denoising with the digits U-Net (reference)")}
for _s in (0.3, 0.5, 1.0, 1.5):
    for _w in ("edm", "rescaled", "normalized"):
        UNET_VARIANTS[f"unet_{_w}_{_s:g}"] = weighted("U-Net", _w, _s)
    UNET_VARIANTS[f"unet_gate_{_s:g}"] = (
        "ambient",
        [
            "--config.loss.weighting=rescaled",
            f"--config.loss.sigma_tn={_s:g}",
            f"--config.loss.sigma_switch={GATE * _s + 0.05:.4g}",
        ],
        f"U-Net, rescaled weight, sigma_tn {_s:g}, ambient rows only above {GATE:.4g} sigma_tn "
        "+ 0.05",
    )
# sigma_tn above the band where a sample's identity is decided at n = 30 (sigma 1.3-2 there:
# docs/ambient_quality.md, section 6)
for _s in (2.0, 3.0):
    UNET_VARIANTS[f"unet_rescaled_{_s:g}"] = weighted("U-Net", "rescaled", _s)
VARIANTS.update(UNET_VARIANTS)

# The same grid with the four-level U-Net at the digits' own 28x28, padded to 32x32
# (configs/mnist_unet32.py): local for longer relative to the image than the 16x16 one.
UNET32_CONFIG = "configs/mnist_unet32.py"
UNET32_VARIANTS = {
    "unet32" + name[len("unet") :]: (objective, overrides, what.replace("U-Net", "32x32 U-Net"))
    for name, (objective, overrides, what) in UNET_VARIANTS.items()
}
# At 32x32 a sample's identity is decided at twice the sigma (n_eff 1.8 at sigma 3.2 there against
# 1.7 at 1.3 at 16x16: distances between digits grow with the pixel count), so the rows that sit
# above that band as unet_rescaled_2 and _3 sit above 16x16's are sigma_tn 4 and 6.
for _s in (4.0, 6.0):
    UNET32_VARIANTS[f"unet32_rescaled_{_s:g}"] = weighted("32x32 U-Net", "rescaled", _s)
VARIANTS.update(UNET32_VARIANTS)

# Data of mixed quality (Ambient Diffusion Omni in miniature): the 100 clean training digits and
# 3,900 corrupted other digits (1,000 stay held out), noised with std 0.5 or blurred with a
# Gaussian of std 1 pixel. Clean images train every level by plain denoising (objective ddpm);
# corrupted ones only above their sigma_tn, behind the group's gate (switch_ratio 1.1547). Every
# mixed run holds the same 1,000 digits out, the clean-only control too.
MIXED = ["--config.data.corrupt_count=3900", f"--config.loss.switch_ratio={GATE:.4f}"]
NOISE = ["--config.data.corrupt_kind=noise", "--config.data.corrupt_level=0.5"]
BLUR = ["--config.data.corrupt_kind=blur", "--config.data.corrupt_level=1.0"]
ANNOTATION = "{root}/annotations/{kind}.json"  # written by ambient-annotate (docs/mixed_quality.md)


def _mixed(corruption, sigma_tn, *extra):
    """A mixed-quality run: ddpm on the clean digits, the corrupted ones at `sigma_tn`."""
    return "ddpm", [*MIXED, *corruption, f"--config.data.corrupt_sigma_tn={sigma_tn}", *extra]


LOCAL_LOW = (
    f"--config.model.split_sigma={0.5 * GATE:.4f}",
    "--config.model.split_low_preset=local_cnn",
)
MIXED_VARIANTS = {
    name: (*_mixed(*setting), what)
    for name, setting, what in (
        (
            "mixed_clean_only",
            (NOISE, "unused"),
            "ddpm on the 100 clean digits alone (the corrupted ones held out, untrained)",
        ),
        ("noise_as_clean", (NOISE, "clean"), "ddpm on all 4,000, the noised ones as if clean"),
        ("noise_known", (NOISE, "known"), "per-image sigma_tn, the noised ones at their known 0.5"),
        (
            "noise_known_image_first",
            (NOISE, "known", "--config.data.corrupt_sampling=image_first"),
            "per-image sigma_tn, known 0.5, batches drawn image first (a level above the image's)",
        ),
        (
            "noise_known_local_low",
            (NOISE, "known", *LOCAL_LOW),
            "per-image sigma_tn, known 0.5; below the noised digits' boundary (0.577) a local CNN "
            "(9x9 window), the MLP above",
        ),
        (
            "noise_classifier",
            (NOISE, ANNOTATION.format(root="{root}", kind="noise")),
            "per-image sigma_tn, the noised ones annotated by the classifier",
        ),
        ("blur_as_clean", (BLUR, "clean"), "ddpm on all 4,000, the blurred ones as if clean"),
        ("blur_fixed", (BLUR, "2.0"), "per-image sigma_tn, every blurred one at a fixed 2.0"),
        (
            "blur_classifier",
            (BLUR, ANNOTATION.format(root="{root}", kind="blur")),
            "per-image sigma_tn, the blurred ones annotated by the classifier",
        ),
    )
}
VARIANTS.update(MIXED_VARIANTS)


STAGES = ("train", "sample", "eval", "diagnose")
# what each stage leaves behind: a stage whose output exists is not run again
STAGE_OUTPUT = {
    "train": "metrics.jsonl",
    "sample": "samples.npz",
    "eval": os.path.join("eval", "metrics.json"),
    "diagnose": os.path.join("eval", "diagnose.json"),
}


def run_variant(root, name, seed, fid_samples, extra, stages=STAGES):
    """Run the given stages of one variant's run; each stage's seconds go to eval/time.json."""
    objective, overrides, _ = VARIANTS[name]
    config = (
        UNET_CONFIG
        if name in UNET_VARIANTS
        else UNET32_CONFIG
        if name in UNET32_VARIANTS
        else CONFIG
    )
    workdir = os.path.join(root, f"{name}_seed{seed}")
    commands = {
        "train": [
            "ambient-train",
            f"--config={config}:{objective}",
            f"--workdir={workdir}",
            "--config.train.log_every=500",
            f"--config.train.seed={seed}",
            *([] if name == "default" else BASE),
            *(o.format(root=root) for o in overrides),
            *extra,
        ],
        "sample": ["ambient-sample", f"--workdir={workdir}"],
        "eval": ["ambient-eval", f"--workdir={workdir}", "--fid", f"--fid_samples={fid_samples}"],
        "diagnose": ["ambient-diagnose", f"--workdir={workdir}"],
    }
    timing = os.path.join(workdir, "eval", "time.json")
    for stage in stages:
        # train's output appears as it runs: a cut run resumes from its checkpoint instead
        done = stage != "train" or os.path.exists(timing)
        if done and os.path.exists(os.path.join(workdir, STAGE_OUTPUT[stage])):
            print(f"skip {stage} of {workdir} (done)", flush=True)
            continue
        argv = commands[stage]
        print("$ " + " ".join(argv), flush=True)
        start = time.perf_counter()
        subprocess.run(
            [os.path.join(BIN, argv[0]), *argv[1:]], check=True, stdout=subprocess.DEVNULL
        )
        seconds = json.load(open(timing)) if os.path.exists(timing) else {}
        seconds[f"{stage}_seconds"] = time.perf_counter() - start
        seconds["total_seconds"] = sum(v for k, v in seconds.items() if k != "total_seconds")
        os.makedirs(os.path.dirname(timing), exist_ok=True)
        with open(timing, "w") as f:
            json.dump(seconds, f)


def rows(root):
    """(variant, seed, metrics) of every finished run under root."""
    out = []
    for entry in sorted(os.listdir(root)):
        if not all(  # not finished (the diagnosis is optional)
            os.path.exists(os.path.join(root, entry, out))
            for out in (STAGE_OUTPUT["eval"], os.path.join("eval", "time.json"))
        ):
            continue
        m = json.load(open(os.path.join(root, entry, "eval", "metrics.json")))
        log = open(os.path.join(root, entry, "metrics.jsonl")).read().strip().splitlines()
        m["train_min"] = max(json.loads(line)["seconds"] for line in log) / 60
        m["run_min"] = (
            json.load(open(os.path.join(root, entry, "eval", "time.json")))["total_seconds"] / 60
        )
        name, seed = entry.rsplit("_seed", 1)
        out.append((name, int(seed), m))
    return out


COLUMNS = (
    ("FD-pixel", lambda m: m["fd_pixel"], ".2f"),
    ("Inception FID (500)", lambda m: m.get("fid_inception_edm", float("nan")), ".1f"),
    ("FD-digits", lambda m: m.get("fd_digits", float("nan")), ".2f"),
    ("confident digits %", lambda m: m.get("confident_digits", float("nan")), ".1f"),
    ("extraction %", lambda m: m["extraction_rate"], ".1f"),
    ("robust extraction %", lambda m: m.get("robust_extraction_rate", float("nan")), ".1f"),
    ("pixel S>0.95 %", lambda m: m["pixel_similarity"]["S>0.95"], ".1f"),
    (
        "robust S>0.95 %",
        lambda m: m.get("robust_pixel_similarity", {}).get("S>0.95", float("nan")),
        ".1f",
    ),
    ("train min", lambda m: m["train_min"], ".1f"),
    ("run min", lambda m: m["run_min"], ".1f"),
)


def table_text(root, mean=False, json_path=None):
    """The markdown table of every finished run under root (mean ± std over seeds with `mean`),
    the held-out reference line and what each row is; `json_path` also gets the raw metrics."""
    import numpy as np

    out = []
    emit = out.append
    found = rows(root)
    if json_path:  # the raw metrics and per-noise-level curves behind the table
        raw = {}
        for name, seed, m in found:
            diagnosis = os.path.join(root, f"{name}_seed{seed}", "eval", "diagnose.json")
            if os.path.exists(diagnosis):
                m = dict(m, diagnosis=json.load(open(diagnosis)))
            raw[f"{name}_seed{seed}"] = m
        with open(json_path, "w") as f:
            json.dump(raw, f, indent=1)
    head = (
        "| variant | "
        + ("seeds" if mean else "seed")
        + " | "
        + " | ".join(c[0] for c in COLUMNS)
        + " |"
    )
    emit(head)
    emit("|---" * (len(COLUMNS) + 2) + "|")
    if mean:
        for name in dict.fromkeys(n for n, _, _ in found):
            ms = [m for n, _, m in found if n == name]
            cells = []
            for _, get, fmt in COLUMNS:
                v = np.array([get(m) for m in ms], float)
                cells.append(
                    f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"
                )
            emit(f"| {name} | {len(ms)} | " + " | ".join(cells) + " |")
    else:
        for name, seed, m in found:
            emit(
                f"| {name} | {seed} | "
                + " | ".join(f"{get(m):{fmt}}" for _, get, fmt in COLUMNS)
                + " |"
            )
    ref = found[0][2] if found else None
    if ref and "heldout_robust_extraction_rate" in ref:
        emit(
            "\nHeld-out real digits (never trained on), the reference for a model that does not "
            "copy: extraction "
            f"{ref['heldout_extraction_rate']:.1f}%, robust extraction "
            f"{ref['heldout_robust_extraction_rate']:.1f}%, "
            f"pixel S>0.95 {ref['heldout_pixel_similarity']['S>0.95']:.1f}%, robust S>0.95 "
            f"{ref['heldout_robust_pixel_similarity']['S>0.95']:.1f}%."
            + (
                f" FD-digits of {ref['num_other_heldout']} other held-out digits: "
                f"{ref['fd_digits_heldout_vs_heldout']:.2f}; their confident-digit share "
                f"{ref['heldout_confident_digits']:.1f}%."
                if "fd_digits_heldout_vs_heldout" in ref
                else ""
            )
        )
    emit(
        f"\nEvery variant is configs/mnist.py (unet_*: {UNET_CONFIG}, unet32_*: "
        f"{UNET32_CONFIG}) with the base settings {' '.join(BASE)} and then its own overrides:\n"
    )
    for name, (_, overrides, what) in VARIANTS.items():
        if any(n == name for n, _, _ in found):
            emit(f"- `{name}`: {what} ({' '.join(overrides) or 'no further overrides'})")
    return "\n".join(out)


def table(root, mean=False, json_path=None):
    print(table_text(root, mean, json_path))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument("--root", default="runs/variants")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--fid_samples", type=int, default=500)
    parser.add_argument("--set", action="append", default=[], help="extra override for every run")
    parser.add_argument(
        "--mean", action="store_true", help="table: mean ± std over seeds, a row per variant"
    )
    parser.add_argument("--json", default=None, help="table: also write the raw results here")
    parser.add_argument("--jobs", type=int, default=1, help="run: runs at once")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help="run: which of " + ",".join(STAGES)
    )
    args = parser.parse_args()
    if args.command == "table":
        table(args.root, args.mean, args.json)
        return
    for name in args.variants.split(","):
        if name not in VARIANTS:
            sys.exit(f"error: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    stages = [s for s in STAGES if s in args.stages.split(",")]
    if not stages or set(args.stages.split(",")) - set(STAGES):
        sys.exit(f"error: --stages takes some of {','.join(STAGES)}, got {args.stages!r}")
    runs = [
        (name, int(seed)) for seed in args.seeds.split(",") for name in args.variants.split(",")
    ]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(run_variant, args.root, name, seed, args.fid_samples, args.set, stages): (
                name,
                seed,
            )
            for name, seed in runs
        }
        failed = []
        for future in concurrent.futures.as_completed(futures):
            if future.exception() is not None:
                failed.append(futures[future])
                print(f"FAILED {futures[future]}: {future.exception()}", flush=True)
    if failed:
        sys.exit(f"error: {len(failed)} of {len(runs)} runs failed: {failed}")


if __name__ == "__main__":
    main()
