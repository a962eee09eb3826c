"""Figures written as PNG files (atomically, to local disks or buckets)."""

import io

from ambient_jax import files


def save_histogram(values, path, xlabel, ylabel, bins=50, value_range=None, marks=()):
    """A histogram of `values` with dashed vertical lines at `marks`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=bins, range=value_range)
    for mark in marks:
        ax.axvline(mark, color="k", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    files.write_bytes_atomic(path, buffer.getvalue())


def save_pareto(points, path, x_label, y_label):
    """Figure 1 of the paper: one point per sigma_tn (mean over seeds; x: memorization, y: quality),
    a line per training-set size, ddpm (sigma_tn = 0) marked with a star.

    points: {n_train: [(sigma_tn, (x_mean, x_std), (y_mean, y_std)), ...]}
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n_train, entries in sorted(points.items()):
        entries = sorted(entries)
        xs = [e[1][0] for e in entries]
        ys = [e[2][0] for e in entries]
        line = ax.errorbar(xs, ys, xerr=[e[1][1] for e in entries], yerr=[e[2][1] for e in entries],
                           marker="o", capsize=2, label=f"{n_train} training images")
        for sigma, (x, _), (y, _) in entries:
            if sigma == 0:
                ax.plot([x], [y], marker="*", markersize=16, color=line[0].get_color(), linestyle="none")
                ax.annotate("ddpm", (x, y), textcoords="offset points", xytext=(6, 4))
            else:
                ax.annotate(f"{sigma:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel(f"memorization: {x_label} (lower is better)")
    ax.set_ylabel(f"quality: {y_label} (lower is better)")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    files.write_bytes_atomic(path, buffer.getvalue())
