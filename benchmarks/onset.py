"""Where plain denoising starts to copy: memorization tracked during long ddpm runs, against the
number of training images seen, for several training-set sizes.

    python benchmarks/onset.py run --root=runs/onset --sizes=30,100 --steps=8000
    python benchmarks/onset.py table --root=runs/onset      # markdown table, onset.png, onset.json

Each run trains configs/mnist_unet.py:ddpm (or --config) on n digits with train.track_every=250
and train.track_samples=128: every 250 steps the tracker draws the same 128 samples and logs the
shares that copy (extraction and S > 0.95, in pixels and in the noise-robust view) beside the same
shares of 128 held-out real digits (training.tracking). A run can be stopped at any time and
resumed with the same command; the table reads whatever has been logged.

The onset is the first tracked step at which the samples copy clearly: extraction >= 30% and robust
S > 0.95 at least 3 times the held-out reals' share.
"""

import argparse
import json
import os
import subprocess
import sys

from matplotlib.figure import Figure

BIN = os.path.dirname(sys.executable)
EXTRACTION_ONSET = 30.0  # % of samples within the extraction criterion
ROBUST_S95_FACTOR = 3.0  # robust S>0.95 at least this many times the held-out reals' share


def train_command(config, root, n, steps, extra):
    return [
        os.path.join(BIN, "ambient-train"),
        f"--config={config}:ddpm",
        f"--workdir={os.path.join(root, f'ddpm_n{n}')}",
        f"--config.data.n_train={n}",
        f"--config.train.num_steps={steps}",
        "--config.train.track_every=250",
        "--config.train.track_samples=128",
        *extra,
    ]


def curves(workdir):
    """The tracking records of a run, in step order, with the images seen (kimg) and epochs."""
    config = json.load(open(os.path.join(workdir, "config.json")))
    batch, n = config["train"]["batch_size"], config["data"]["n_train"]
    records = [
        json.loads(line)
        for line in open(os.path.join(workdir, "metrics.jsonl"))
        if "track_extraction" in line
    ]
    for r in records:
        r["kimg"] = r["step"] * batch / 1000
        r["epochs"] = r["step"] * batch / n
    return n, sorted(records, key=lambda r: r["step"])


def onset(records):
    """The first record at which the samples copy clearly (module docstring), or None."""
    for r in records:
        floor = max(r["track_heldout_robust_s95"], 100 / 128)  # one tracked image at least
        if (
            r["track_extraction"] >= EXTRACTION_ONSET
            and r["track_robust_s95"] >= ROBUST_S95_FACTOR * floor
        ):
            return r
    return None


def runs(root):
    found = []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if os.path.exists(os.path.join(path, "metrics.jsonl")):
            n, records = curves(path)
            if records:
                found.append((n, entry, records))
    return sorted(found)


def table(root):
    found = runs(root)
    print(
        "| run | n | step | kimg seen | epochs | extraction % | robust extraction % "
        "| pixel S>0.95 % | robust S>0.95 % | gap at sigma 1 |"
    )
    print("|---" * 10 + "|")
    for n, name, records in found:
        for r in records:
            print(
                f"| {name} | {n} | {r['step']} | {r['kimg']:.0f} | {r['epochs']:.0f} | "
                f"{r['track_extraction']:.1f} | {r['track_robust_extraction']:.1f} | "
                f"{r['track_s95']:.1f} | {r['track_robust_s95']:.1f} | "
                f"{r.get('track_gap_sigma1', float('nan')):.4f} |"
            )
    print("\nHeld-out real digits (128 per run, never trained on), the level of no copying:")
    for n, name, records in found:
        r = records[-1]
        print(
            f"- {name}: extraction {r['track_heldout_extraction']:.1f}%, robust extraction "
            f"{r['track_heldout_robust_extraction']:.1f}%, "
            f"pixel S>0.95 {r['track_heldout_s95']:.1f}%, "
            f"robust S>0.95 {r['track_heldout_robust_s95']:.1f}%"
        )
    print(
        f"\nOnset (extraction >= {EXTRACTION_ONSET:g}% and robust S>0.95 >= "
        f"{ROBUST_S95_FACTOR:g}x the held-out reals'):"
    )
    for n, name, records in found:
        hit = onset(records)
        print(
            f"- {name}: "
            + (
                f"step {hit['step']} ({hit['kimg']:.0f} kimg, {hit['epochs']:.0f} epochs)"
                if hit
                else f"not reached by step {records[-1]['step']} ({records[-1]['kimg']:.0f} kimg)"
            )
        )
    plot(found, os.path.join(root, "onset.png"))
    with open(os.path.join(root, "onset.json"), "w") as f:  # the raw records behind the table
        json.dump({name: records for _, name, records in found}, f, indent=1)


def plot(found, path):
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    for i, (n, name, records) in enumerate(found):
        kimg = [r["kimg"] for r in records]
        colour = f"C{i}"
        left.plot(kimg, [r["track_extraction"] for r in records], ".-", color=colour, label=name)
        left.plot(kimg, [r["track_robust_extraction"] for r in records], ":", color=colour)
        right.plot(kimg, [r["track_robust_s95"] for r in records], ".-", color=colour, label=name)
        right.axhline(records[-1]["track_heldout_robust_s95"], color=colour, lw=0.8, ls="--")
    left.set_title("extraction % (solid: pixels, dotted: noise-robust view)", fontsize=10)
    right.set_title("robust S>0.95 % (dashed: held-out reals)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("training images seen (thousands)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\n![onset]({path})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument("--root", default="runs/onset")
    parser.add_argument("--config", default="configs/mnist_unet.py")
    parser.add_argument("--sizes", default="30,50,100,300")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--set", action="append", default=[], help="extra override for every run")
    args = parser.parse_args()
    if args.command == "table":
        table(args.root)
        return
    for n in [int(s) for s in args.sizes.split(",")]:
        argv = train_command(args.config, args.root, n, args.steps, args.set)
        print("$ " + " ".join(argv[1:]), flush=True)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
