"""Starting a run from a trained one (config.finetune): the pure half. run_dir.start_from reads the
trained run and hands its trees here.

    finetune.init_from      a work dir of a trained run: its EMA weights start this one, in both
                            the parameters and their EMA (EDM's --transfer)
    finetune.keep_optimizer also its Adam state (moments and count); else a fresh optimizer
    finetune.keep_ema       the EMA keeps the trained average at its full half-life from the first
                            step (EDM's --transfer turns the ramp-up off); else it ramps up as in a
                            new run, so it soon follows the fine-tuned weights
    finetune.train_above    > 0: only noise levels >= this train (each row's level drawn from the
                            log-normal conditioned above it), and below it the network stays the
                            trained one, frozen: the network is two copies of the trained one
                            joined at this level (nets.SplitBySigma), `low` never updated

Weights are shared across noise levels, so keeping the trained network below a level while the
levels above change needs the two copies; with train_above = sigma_tn and the ambient objective
the new images are never seen clean (the lecture: "one way to mitigate memorization is to never
see the training data").
"""

from typing import Any

import jax

from ambient_jax.checks import need
from ambient_jax.types import Config, PyTree

INIT_RECORD = "init.json"  # in the work dir: where the run started from (path and step)
FROZEN = "low"  # the frozen half of the split network (nets.SplitBySigma)
SPLIT_HALVES = ("low", "high")


def check_config(finetune: Config, model: Config, data: Config) -> None:
    """config.finetune values a run cannot start with, each named (ValueError). Whether the loss
    can draw its rows above train_above is losses.check_config's (the objective's own check)."""
    for name in ("keep_optimizer", "keep_ema", "train_above"):
        need(
            not finetune[name] or bool(finetune.init_from),
            f"finetune.{name}",
            "needs finetune.init_from (a trained run's work dir)",
        )
    if finetune.train_above:
        need(
            not model.split_sigma,
            "finetune.train_above",
            "splits the network itself at that level: set model.split_sigma=0",
        )
        need(
            model.precond.kind == "edm",
            "finetune.train_above",
            "splits at EDM's c_noise = ln(sigma) / 4: it needs model.precond.kind='edm'",
        )
        need(
            not data.corrupt_count,
            "finetune.train_above",
            "is not available with data of mixed quality (data.corrupt_count > 0)",
        )


def _name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _names(path: tuple) -> tuple[str, ...]:
    return tuple(_name(e) for e in path)


def _is_frozen(path: tuple) -> bool:
    names = _names(path)
    return any(a == "params" and b == FROZEN for a, b in zip(names, names[1:]))


def hold_frozen(new: PyTree, old: PyTree) -> PyTree:
    """`new` with every leaf of the frozen half (params/low/...) taken from `old`: the step's
    update and EMA never move the pretrained network below finetune.train_above."""
    return jax.tree_util.tree_map_with_path(
        lambda path, n, o: o if _is_frozen(path) else n, new, old
    )


def graft(source: PyTree, target: PyTree, source_name: str) -> PyTree:
    """`target`'s structure filled with `source`'s leaves: the same parameter where the trees
    agree, and for a target split in two (params/low/..., params/high/...) where the source is one
    network, the source's parameter in each half. ValueError naming the first parameter that does
    not fit (missing in the source, another shape, or a source parameter with no place)."""
    leaves = {_names(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(source)[0]}
    used = set()

    def source_key(names):
        if names in leaves:
            return names
        for i in range(len(names) - 1):  # a half of a split target from a one-network source
            if names[i] == "params" and names[i + 1] in SPLIT_HALVES:
                alone = names[: i + 1] + names[i + 2 :]
                if alone in leaves:
                    return alone
        return None

    def fill(path, want):
        names = _names(path)
        key = source_key(names)
        if key is None:
            raise ValueError(
                f"the network of this config does not fit the weights of {source_name}: "
                f"parameter {'/'.join(names)} is not among them (set model.* and data.* as in "
                f"{source_name}/config.json)"
            )
        got = leaves[key]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(
                f"the network of this config does not fit the weights of {source_name}: "
                f"parameter {'/'.join(names)} has shape {tuple(want.shape)} here and "
                f"{tuple(got.shape)} there (set model.* and data.* as in "
                f"{source_name}/config.json)"
            )
        used.add(key)
        return got

    out = jax.tree_util.tree_map_with_path(fill, target)
    unused = [k for k in leaves if k not in used]
    if unused:
        raise ValueError(
            f"the network of this config does not fit the weights of {source_name}: its "
            f"parameter {'/'.join(unused[0])} has no place here (set model.* and data.* as in "
            f"{source_name}/config.json)"
        )
    return out
