"""Sweeps over sigma_tn (sigma_tn = 0 is the ddpm objective), training-set sizes and seeds, and the
report that turns their evaluations into the paper's Table 1 and Figure 1 (FID vs memorization).

Each run has its own work dir `<root>/n<N>_s<SIGMA>_seed<SEED>`; a run whose evaluation exists is
skipped, so an interrupted sweep resumes. `commands` lists one shell line per run, for launching
them as separate jobs.
"""

import collections
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
from typing import Sequence

import numpy as np

from ambient_jax import files, plots, summaries
from ambient_jax.diffusion import losses
from ambient_jax.programs import children
from ambient_jax.training import workdir_lock
from ambient_jax.types import Log


def run_name(n_train: int, sigma_tn: float, seed: int) -> str:
    return f"n{n_train}_s{sigma_tn:g}_seed{seed}"


def run_overrides(n_train: int, sigma_tn: float, seed: int) -> list[str]:
    objective = losses.objective_for(sigma_tn)
    overrides = [
        f"--config.data.n_train={n_train}",
        f"--config.loss.objective={objective}",
        f"--config.train.seed={seed}",
    ]
    if sigma_tn:
        overrides.append(f"--config.loss.sigma_tn={sigma_tn}")
    return overrides


def commands(
    config: str,
    root: str,
    sigmas: Sequence[float],
    sizes: Sequence[int],
    seeds: Sequence[int],
    extra: Sequence[str] = (),
    eval_flags: Sequence[str] = ("--nofid",),
) -> list[tuple[str, list[list[str]]]]:
    """[(workdir, [argv, ...])]: train, sample and evaluate each run of the grid."""
    runs = []
    for n_train in sizes:
        for sigma_tn in sigmas:
            for seed in seeds:
                workdir = os.path.join(root, run_name(n_train, sigma_tn, seed))
                # The grid's own values come last, so that they win over the shared overrides.
                train = [
                    "ambient-train",
                    f"--config={config}",
                    f"--workdir={workdir}",
                    *extra,
                    *run_overrides(n_train, sigma_tn, seed),
                ]
                # The evaluation comes last: its metrics.json marks the run as done.
                runs.append(
                    (
                        workdir,
                        [
                            train,
                            ["ambient-sample", f"--workdir={workdir}"],
                            ["ambient-diagnose", f"--workdir={workdir}"],
                            ["ambient-eval", f"--workdir={workdir}", *eval_flags],
                        ],
                    )
                )
    return runs


def run_all(runs: list[tuple[str, list[list[str]]]], log: Log = print, jobs: int = 1) -> None:
    """Run the grid, skipping evaluated runs; each run's programs one after another.

    jobs > 1 runs that many runs at once (many small runs fill one large accelerator or a many-core
    host). Their output then goes to <workdir>/sweep.log, and on a GPU each program takes memory as
    it needs it instead of JAX's default 75% of the device. Raises after all runs, naming every
    failed run, so that one bad run does not stop the others.
    """
    bin_dir = os.path.dirname(sys.executable)
    todo = []
    for workdir, steps in runs:
        if files.exists(os.path.join(workdir, "eval", "metrics.json")):
            log(f"skip {workdir} (evaluated)")
        else:
            todo.append((workdir, steps))
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    def run_one(workdir, steps):
        skip = workdir_lock.held_by_leftover(workdir)
        if skip:
            log(skip)
            return None
        out = None
        if jobs > 1:
            os.makedirs(workdir, exist_ok=True)
            out = open(os.path.join(workdir, "sweep.log"), "a")
        try:
            for argv in steps:
                log("$ " + " ".join(shlex.quote(a) for a in argv))
                program = os.path.join(bin_dir, argv[0])
                returncode = children.run(
                    [program if os.path.exists(program) else argv[0], *argv[1:]],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT if out else None,
                )
                if returncode:
                    where = f"; its output is in {out.name}" if out else ""
                    return f"{argv[0]} failed for {workdir} (exit {returncode}){where}"
            return None
        finally:
            if out:
                out.close()

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        started = [pool.submit(run_one, *run) for run in todo]
        list(children.as_completed(started))  # (the main thread stays free for a stop signal)
        failures = [f for f in (future.result() for future in started) if f]
    if failures:
        raise children.ChildFailed(
            "; ".join(failures) + "; fix it and re-run the sweep (evaluated runs are skipped)"
        )


def collect(root: str) -> dict[tuple[int, float], list[dict]]:
    """Evaluated runs under root: {(n_train, sigma_tn): [metrics, ...]} (one entry per seed)."""
    groups = collections.defaultdict(list)
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "eval", "metrics.json")
        if not files.exists(path):
            continue
        metrics = json.loads(files.read_text(path))
        log = summaries.metrics_path(os.path.join(root, name))
        if files.exists(log):  # the training log's last line has the run's training time
            metrics["train_minutes"] = (
                json.loads(files.read_text(log).strip().splitlines()[-1])["seconds"] / 60
            )
        groups[(metrics["num_train"], metrics["sigma_tn"])].append(metrics)
    if not groups:
        raise FileNotFoundError(f"no evaluated runs (…/eval/metrics.json) under {root}")
    return dict(groups)


def _values(runs, key):
    out = []
    for m in runs:
        value = m
        for part in key.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out.append(float(value))
    return out


def _mean_std(runs, key):
    values = _values(runs, key)
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table_rows(groups: dict[tuple[int, float], list[dict]]) -> list[tuple[str, str]]:
    """Rows (label, metric key) present in every run: quality first, then memorization."""
    first = next(iter(groups.values()))[0]
    rows = [
        (k, k)
        for k in ("fid_inception_edm", "fid_inception_edm_dataset", "fd_dinov2", "fd_pixel")
        if k in first
    ]
    if (
        "fd_pixel_train_vs_heldout" in first
    ):  # what a model that only replays its training set scores
        rows.append(("  training images themselves: fd_pixel", "fd_pixel_train_vs_heldout"))
    if "fd_digits" in first:  # the digit classifier's view (eval.digits), with real digits' values
        rows += [
            ("fd_digits", "fd_digits"),
            ("  held-out reals: fd_digits", "fd_digits_heldout_vs_heldout"),
            ("confident digits %", "confident_digits"),
            ("  held-out reals: confident digits %", "heldout_confident_digits"),
        ]
    rows.append(("extraction rate %", "extraction_rate"))
    if "robust_extraction_rate" in first:
        rows.append(("robust extraction rate % (noise-robust view)", "robust_extraction_rate"))
        rows.append(
            ("  held-out reals: robust extraction rate %", "heldout_robust_extraction_rate")
        )
    for space in ("dinov2", "inception", "pixel", "robust_pixel"):
        for key in first.get(f"{space}_similarity", {}):
            if key.startswith("S>"):
                rows.append((f"{space} {key} %", f"{space}_similarity/{key}"))
                # The same share for held-out real images: how close a new image naturally is.
                rows.append(
                    (f"  held-out reals: {space} {key} %", f"heldout_{space}_similarity/{key}")
                )
    rows.append(("training minutes", "train_minutes"))
    return rows


def report(root: str, quality: str | None = None, memorization: str | None = None) -> str:
    """Write <root>/table.md and <root>/pareto.png; returns the table text."""
    groups = collect(root)
    rows = table_rows(groups)
    keys = sorted(groups)
    names = [f"n={n} {losses.sigma_tn_label(s)}" for n, s in keys]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(keys)]
    for label, key in rows:
        cells = []
        for k in keys:
            stat = _mean_std(groups[k], key)
            cells.append("-" if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| seeds | " + " | ".join(str(len(groups[k])) for k in keys) + " |")
    text = "\n".join(lines) + "\n\nmean ± standard deviation over seeds; ddpm = sigma_tn 0.\n"
    files.write_text_atomic(os.path.join(root, "table.md"), text)

    quality = quality or rows[0][1]
    memorization = memorization or "extraction_rate"
    points: dict = {}
    for (n, s), runs in groups.items():
        q, m = _mean_std(runs, quality), _mean_std(runs, memorization)
        if q and m:
            points.setdefault(n, []).append((s, m, q))
    plots.save_pareto(points, os.path.join(root, "pareto.png"), memorization, quality)
    diagnoses = _first_seed_diagnoses(root, groups)
    if diagnoses:
        plots.save_diagnosis(diagnoses, os.path.join(root, "diagnose.png"))
        text += (
            "\nPer-noise-level diagnosis (first seed of each point; ambient_jax.eval.diagnose): "
            "diagnose.png, "
            "and each run's eval/diagnose.md.\n"
        )
        files.write_text_atomic(os.path.join(root, "table.md"), text)
    return text


def _first_seed_diagnoses(root, groups):
    """eval/diagnose.json of the first run (by name) of each (n_train, sigma_tn), where written."""
    out = []
    for (n, s), runs in sorted(groups.items()):
        for m in sorted(runs, key=lambda m: m["workdir"]):
            path = os.path.join(root, os.path.basename(m["workdir"]), "eval", "diagnose.json")
            if files.exists(path):
                result = json.loads(files.read_text(path))
                result["label"] = f"n={n} {losses.sigma_tn_label(s)}"
                out.append(result)
                break
    return out
