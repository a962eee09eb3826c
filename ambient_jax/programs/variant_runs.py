"""Registered variants run side by side at equal budget (ambient-sweep variants), and their
table (ambient-sweep variants-table): the experiment runner behind the studies of
docs/variants.md, ambient_quality.md and mixed_quality.md.

    ambient-sweep variants --root=runs/variants --variants=ddpm,rescaled_1.5 --seeds=0
    ambient-sweep variants-table --root=runs/variants [--mean] [--json=raw.json]

The variants are data (configs/variants.py, installed as ambient_jax.configs.variants): each
trains its config with the BASE settings and its own overrides, draws 1,000 samples (seed 1) and
is evaluated with `ambient-eval --fid --fid_samples=500` and `ambient-diagnose`. Each stage
whose output exists is skipped, so a cut grid resumes; the stages' seconds go to eval/time.json.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

from ambient_jax.configs.variants import BASE, UNET32_CONFIG, UNET_CONFIG, VARIANTS, config_of
from ambient_jax.eval import convert
from ambient_jax.programs import children
from ambient_jax.training import workdir_lock
from ambient_jax.types import Log

BIN = os.path.dirname(sys.executable)

STAGES = ("train", "sample", "eval", "diagnose")
# what each stage leaves behind: a stage whose output exists is not run again
STAGE_OUTPUT = {
    "train": "metrics.jsonl",
    "sample": "samples.npz",
    "eval": os.path.join("eval", "metrics.json"),
    "diagnose": os.path.join("eval", "diagnose.json"),
}


def run_variant(
    root: str,
    name: str,
    seed: int,
    fid_samples: int,
    extra: Sequence[str],
    stages: Sequence[str] = STAGES,
    log: Log = print,
) -> None:
    """Run the given stages of one variant's run; each stage's seconds go to eval/time.json."""
    objective, overrides, _ = VARIANTS[name]
    config = config_of(name)
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
    skip = workdir_lock.held_by_leftover(workdir)
    if skip:
        log(skip)
        return
    for stage in stages:
        # train's output appears as it runs: a cut run resumes from its checkpoint instead
        done = stage != "train" or os.path.exists(timing)
        if done and os.path.exists(os.path.join(workdir, STAGE_OUTPUT[stage])):
            log(f"skip {stage} of {workdir} (done)")
            continue
        argv = commands[stage]
        log("$ " + " ".join(argv))
        start = time.perf_counter()
        returncode = children.run(
            [os.path.join(BIN, argv[0]), *argv[1:]], stdout=subprocess.DEVNULL
        )
        if returncode:
            raise subprocess.CalledProcessError(returncode, argv)
        if children.stopping():  # stopped early (ambient-train saves and exits 0): not done
            log(f"stopped during {stage} of {workdir}; a rerun resumes it there")
            return
        seconds = json.load(open(timing)) if os.path.exists(timing) else {}
        seconds[f"{stage}_seconds"] = time.perf_counter() - start
        seconds["total_seconds"] = sum(v for k, v in seconds.items() if k != "total_seconds")
        os.makedirs(os.path.dirname(timing), exist_ok=True)
        with open(timing, "w") as f:
            json.dump(seconds, f)


def rows(root: str) -> list[tuple[str, int, dict]]:
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


def table_text(root: str, mean: bool = False, json_path: str | None = None) -> str:
    """The markdown table of every finished run under root (mean ± std over seeds with `mean`),
    the held-out reference line and what each row is; `json_path` also gets the raw metrics."""
    out: list[str] = []
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


def run_many(
    root: str,
    names: Sequence[str],
    seeds: Sequence[int],
    fid_samples: int = 500,
    extra: Sequence[str] = (),
    stages: Sequence[str] = STAGES,
    jobs: int = 1,
    log: Log = print,
) -> None:
    """Every (variant, seed) of the grid, `jobs` at once; unknown names or stages are refused
    before anything runs (ValueError), and failed runs are named at the end."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    if not stages or set(stages) - set(STAGES):
        raise ValueError(f"--stages takes some of {','.join(STAGES)}, got {','.join(stages)}")
    ordered = [s for s in STAGES if s in stages]
    if "eval" in ordered:  # ambient-eval --fid: refused now, not after the runs have trained
        try:
            convert.require_inception()
        except convert.ConversionError as err:
            raise ValueError(f"the eval stage measures FID, and there are {err}") from None
    runs = [(name, seed) for seed in seeds for name in names]
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {
            pool.submit(run_variant, root, name, seed, fid_samples, extra, ordered, log): (
                name,
                seed,
            )
            for name, seed in runs
        }
        failed = []
        for future in children.as_completed(futures):
            if future.exception() is not None:
                failed.append(futures[future])
                log(f"FAILED {futures[future]}: {future.exception()}")
    if failed:
        raise children.ChildFailed(f"{len(failed)} of {len(runs)} runs failed: {failed}")
