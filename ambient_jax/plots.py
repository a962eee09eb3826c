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
