"""Figures written as PNG files (atomically, to local disks or buckets)."""

import io
from typing import Sequence

import numpy as np
from PIL import Image

from ambient_jax import files


def _figure_bytes(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _subplots(*grid, figsize):
    """A figure of its own (matplotlib's object API: no pyplot state, no backend to choose).
    matplotlib is imported here, when a figure is drawn, not by every program at start."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid)


def save_diagnosis(results: list[dict], path: str) -> None:
    """The per-noise-level diagnosis (ambient_jax.eval.diagnose): a curve per run (one colour per
    run in every panel) in five panels, each run's sigma_tn marked by a dotted line of its
    colour."""

    from matplotlib.ticker import NullFormatter

    fig, axes = _subplots(1, 5, figsize=(25, 4.2))
    panels = (
        ("err_heldout", "denoising error (held-out solid, train dashed)"),
        ("gap", "generalization gap: err held-out - err train"),
        ("dist_memorizing", "distance to D*_S (copies the training set)"),
        ("dist_noisy_copies", "distance to D*_tn (memorizes the noisy copies)"),
        ("globality", "globality (0 = local; D*_S dashed)"),
    )
    colours = {r["label"]: f"C{i}" for i, r in enumerate(results)}
    for ax, (key, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        if not any(key in r for r in results):
            ax.text(0.5, 0.5, "no ambient run", transform=ax.transAxes, ha="center")
            continue
        for r in results:
            if key not in r:
                continue
            colour = colours[r["label"]]
            values = [float("nan") if v is None else v for v in r[key]]
            ax.plot(r["sigma"], values, marker=".", color=colour, label=r["label"])
            if key == "err_heldout":
                ax.plot(r["sigma"], r["err_train"], ls="--", color=colour)
            if key == "globality":
                ax.plot(r["sigma"], r["globality_memorizing"], ls="--", color=colour)
            if r["sigma_tn"] > 0:
                ax.axvline(r["sigma_tn"], color=colour, lw=0.8, ls=":")
        ax.set_xscale("log")
        if key != "globality":  # a share from 0 to about 1: linear
            ax.set_yscale(
                "symlog" if key == "gap" else "log",
                **({"linthresh": 1e-3} if key == "gap" else {}),
            )
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sigma")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("per-pixel mean squared value")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    files.write_bytes_atomic(path, _figure_bytes(fig))


def save_tracking(history: list[dict], path: str) -> None:
    """Memorization during training (training.tracking): the train/held-out gap per noise level,
    and the extraction share of a fixed batch of samples, against the training step."""

    steps = [r["step"] for r in history]
    fig, (left, right) = _subplots(1, 2, figsize=(10, 3.5))
    for key in sorted(k for k in history[-1] if k.startswith("track_gap_sigma")):
        left.plot(
            steps,
            [r.get(key, float("nan")) for r in history],
            marker=".",
            label=f"sigma = {key[len('track_gap_sigma') :]}",
        )
    left.set_title("generalization gap: err held-out - err train", fontsize=10)
    left.set_ylabel("per-pixel mean squared value")
    left.legend(fontsize=8)
    for key, label in (
        ("track_extraction", "extraction, pixels"),
        ("track_robust_extraction", "extraction, noise-robust view"),
        ("track_s95", "S>0.95, pixels"),
        ("track_robust_s95", "S>0.95, noise-robust view"),
    ):
        if key in history[-1]:
            (line,) = right.plot(
                steps, [r.get(key, float("nan")) for r in history], marker=".", label=label
            )
            reference = history[-1].get(key.replace("track_", "track_heldout_"))
            if reference is not None:  # the held-out reals' share: no copying
                right.axhline(reference, color=line.get_color(), ls=":", lw=1)
    right.set_title("samples that copy (%; dotted: held-out reals)", fontsize=10)
    right.set_ylim(-2, 102)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    files.write_bytes_atomic(path, _figure_bytes(fig))


def save_histogram(
    values: np.ndarray,
    path: str,
    xlabel: str,
    ylabel: str,
    bins: int = 50,
    value_range: tuple[float, float] | None = None,
    marks: Sequence[float] = (),
) -> None:
    """A histogram of `values` with dashed vertical lines at `marks`."""

    fig, ax = _subplots(figsize=(5, 3))
    ax.hist(values, bins=bins, range=value_range)
    for mark in marks:
        ax.axvline(mark, color="k", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    files.write_bytes_atomic(path, buffer.getvalue())


def save_bars(
    labels: Sequence[str], values: Sequence[float], path: str, xlabel: str, ylabel: str
) -> None:
    """A bar per label (e.g. how many images an annotation puts in each bin)."""
    fig, ax = _subplots(figsize=(6, 3.2))
    ax.bar(range(len(values)), list(values))
    ax.set_xticks(range(len(values)), list(labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    files.write_bytes_atomic(path, _figure_bytes(fig))


def save_pareto(points: dict, path: str, x_label: str, y_label: str) -> None:
    """Figure 1 of the paper: one point per sigma_tn (mean over seeds; x: memorization, y: quality),
    a line per training-set size, ddpm (sigma_tn = 0) marked with a star.

    points: {n_train: [(sigma_tn, (x_mean, x_std), (y_mean, y_std)), ...]}
    """

    fig, ax = _subplots(figsize=(6, 4))
    for n_train, entries in sorted(points.items()):
        entries = sorted(entries)
        xs = [e[1][0] for e in entries]
        ys = [e[2][0] for e in entries]
        line = ax.errorbar(
            xs,
            ys,
            xerr=[e[1][1] for e in entries],
            yerr=[e[2][1] for e in entries],
            marker="o",
            capsize=2,
            label=f"{n_train} training images",
        )
        for sigma, (x, _), (y, _) in entries:
            if sigma == 0:
                ax.plot(
                    [x], [y], marker="*", markersize=16, color=line[0].get_color(), linestyle="none"
                )
                ax.annotate("ddpm", (x, y), textcoords="offset points", xytext=(6, 4))
            else:
                ax.annotate(
                    f"{sigma:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8
                )
    ax.set_xlabel(f"memorization: {x_label} (lower is better)")
    ax.set_ylabel(f"quality: {y_label} (lower is better)")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    files.write_bytes_atomic(path, buffer.getvalue())


def tile(images_uint8: np.ndarray, cols: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] images -> one uint8 [rows (H + 2) + 2, cols (W + 2) + 2, C] grid, white
    gaps."""
    n, h, w, c = images_uint8.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
    for i, img in enumerate(images_uint8):
        r, col = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w] = img
    return grid


def save_grid(images_uint8: np.ndarray, path: str, cols: int | None = None) -> None:
    """Tile uint8 [N, H, W, C] images into one PNG (atomically)."""
    h, c = images_uint8.shape[1], images_uint8.shape[3]
    grid = tile(images_uint8, cols)
    scale = max(1, 64 // h)  # small digits are unreadable at 1:1
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        picture = picture.resize(
            (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
        )
    files.save_png(picture, path)
