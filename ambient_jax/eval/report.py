"""The evaluation's outputs: the report (the paper's Table 1 layout, a column per run), the
figures and the TensorBoard scalars. ambient_jax.eval.evaluate computes the metrics; this module
only writes them."""

import json
import os
from typing import Sequence

import numpy as np

from ambient_jax import files, plots, summaries
from ambient_jax.data import to_uint8
from ambient_jax.diffusion import losses
from ambient_jax.eval import digits

EVAL_DIR = "eval"


ROWS = (
    ("FD-pixel (vs held-out, lower is better)", lambda m: m["fd_pixel"]),
    ("median L2 to nearest held-out", lambda m: m["median_l2_to_heldout"]),
    ("extraction rate % (Carlini)", lambda m: m["extraction_rate"]),
    (
        "robust extraction rate % (noise-robust view)",
        lambda m: m.get("robust_extraction_rate", float("nan")),
    ),
    ("median L2 to nearest training image", lambda m: m["median_l2_to_train"]),
)


def run_label(workdir: str, sigma_tn: float) -> str:
    """A run's name in tables and figures: its work dir's name, and its objective where the name
    does not say it."""
    kind = losses.sigma_tn_label(sigma_tn)
    kind = kind if kind == "ddpm" else f"ambient {kind}"
    name = os.path.basename(os.path.normpath(workdir or "")) or kind
    return kind if name in ("ddpm", "ambient") else f"{name} ({kind})"


def _similarity_rows(runs, space, label):
    """The "S > tau" rows of one embedding space, with the held-out reals' share as reference."""
    if not all(f"{space}_similarity" in m for m in runs):
        return []
    return [
        f"| {label} {key} % (held-out reals: {runs[0][f'heldout_{space}_similarity'][key]:.1f}) | "
        + " | ".join(f"{m[f'{space}_similarity'][key]:.1f}" for m in runs)
        + " |"
        for key in runs[0][f"{space}_similarity"]
        if key.startswith("S>")
    ]


def _digit_rows(runs):
    """FD-digits and the confident-digit share (eval.digits), with the real digits' values."""
    if not all("fd_digits" in m for m in runs):
        return []
    first = runs[0]
    floor = first.get("fd_digits_heldout_vs_heldout")
    reals = f"held-out reals: {floor:.2f}, " if floor is not None else ""
    cells = lambda key, fmt: " | ".join(f"{m[key]:{fmt}}" for m in runs)
    return [
        f"| FD-digits (digit-classifier features; {reals}training images: "
        f"{first['fd_digits_train_vs_heldout']:.2f}) | {cells('fd_digits', '.2f')} |",
        f"| confident digits % (classifier p >= {digits.CONFIDENCE}; held-out reals: "
        f"{first['heldout_confident_digits']:.1f}) | {cells('confident_digits', '.1f')} |",
    ]


def markdown_table(runs: list[dict]) -> str:
    """The paper's Table 1 layout: rows are metrics, columns are runs."""
    names = [run_label(m.get("workdir", ""), m["sigma_tn"]) for m in runs]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(runs)]
    for label, get in ROWS:
        lines.append(f"| {label} | " + " | ".join(f"{get(m):.2f}" for m in runs) + " |")
    lines += _digit_rows(runs)
    for space, label in (("pixel", "pixel"), ("robust_pixel", "robust")):
        lines += _similarity_rows(runs, space, label)
    if all("heldout_robust_extraction_rate" in m for m in runs):
        lines.append(
            "| held-out reals: extraction % / robust extraction % | "
            f"{runs[0]['heldout_extraction_rate']:.1f} / "
            f"{runs[0]['heldout_robust_extraction_rate']:.1f} |" + " |" * (len(runs) - 1)
        )
    for name in (
        "fid_inception_edm",
        "fid_inception_pytorch_fid",
        "fid_inception_edm_dataset",
        "fid_inception_pytorch_fid_dataset",
        "fd_dinov2",
    ):
        if all(name in m for m in runs):
            lines.append(
                f"| {name} (vs held-out) | " + " | ".join(f"{m[name]:.2f}" for m in runs) + " |"
            )
    for space in ("inception", "dinov2"):
        lines += _similarity_rows(runs, space, space)
    if all("num_heldout_for_fd" in m for m in runs):  # older metrics.json files lack it
        lines.append(
            "| samples / held-out images in FD-pixel | "
            + " | ".join(f"{m['num_samples']} / {m['num_heldout_for_fd']}" for m in runs)
            + " |"
        )
    if all("num_fid_samples" in m for m in runs):
        lines.append(
            "| samples / held-out images in FID | "
            + " | ".join(
                f"{m['num_fid_samples']} / {m.get('num_fid_heldout', m['num_fid_samples'])}"
                for m in runs
            )
            + " |"
        )
    lines.append(
        "| samples / training images | "
        + " | ".join(f"{m['num_samples']} / {m['num_train']}" for m in runs)
        + " |"
    )
    return "\n".join(lines) + "\n"


def write_summaries(workdir: str, metrics: dict) -> None:
    """The evaluation's scalars in the run's TensorBoard events, at the run's last logged step."""
    steps = summaries.logged_steps(summaries.metrics_path(workdir))
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    events = summaries.Summaries(workdir)
    events.scalars(max(steps) if steps else 0, flat, "eval")
    events.close()


def diagnosis_link(workdir: str) -> str:
    """The report's pointer to the per-noise-level diagnosis (ambient_jax.eval.diagnose)."""
    if files.exists(os.path.join(workdir, EVAL_DIR, "diagnose.md")):
        return "\nPer-noise-level diagnosis: [diagnose.md](diagnose.md), ![curves](diagnose.png)\n"
    return (
        f"\nPer-noise-level diagnosis: run `ambient-diagnose --workdir={workdir}` (writes "
        "eval/diagnose.md and .png).\n"
    )


def compare_runs(workdirs: list[str]) -> str:
    runs = []
    for w in workdirs:
        path = os.path.join(w, EVAL_DIR, "metrics.json")
        if not files.exists(path):
            raise FileNotFoundError(f"{path} is missing: run ambient-eval --workdir={w} first")
        runs.append(json.loads(files.read_text(path)))
    return markdown_table(runs)


def save_nearest_figure(
    samples_u8: np.ndarray,
    sims: np.ndarray,
    nearest: np.ndarray,
    train: np.ndarray,
    path: str,
    count: int = 16,
) -> None:
    """The most similar samples (top row of each pair) above their nearest training images."""
    order = np.argsort(-sims)[:count]
    pairs = np.concatenate([samples_u8[order], to_uint8(train[nearest[order]])])
    plots.save_grid(pairs, path, cols=len(order))


def save_histogram(sims: np.ndarray, path: str, thresholds: Sequence[float]) -> None:
    plots.save_histogram(
        sims,
        path,
        "max cosine similarity to a training image (pixels)",
        "samples",
        value_range=(min(0.0, float(sims.min())), 1.0),
        marks=thresholds,
    )


def write_outputs(
    workdir: str,
    metrics: dict,
    samples_u8: np.ndarray,
    sims: np.ndarray,
    nearest: np.ndarray,
    train: np.ndarray,
    thresholds: Sequence[float],
) -> None:
    """Everything an evaluation leaves in WORKDIR/eval: metrics.json, report.md, the nearest-
    neighbour figure, the similarity histogram, and its scalars in the TensorBoard events."""
    out = os.path.join(workdir, EVAL_DIR)
    files.write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    write_summaries(workdir, metrics)
    files.write_text_atomic(
        os.path.join(out, "report.md"), markdown_table([metrics]) + diagnosis_link(workdir)
    )
    save_nearest_figure(samples_u8, sims, nearest, train, os.path.join(out, "nearest.png"))
    save_histogram(sims, os.path.join(out, "similarity_histogram.png"), thresholds)
