"""Checkpoints of the train state with orbax's CheckpointManager.

Saves are asynchronous and committed atomically by orbax (a step folder becomes visible to
`latest_step` only once its commit finished), so an interrupted save is never restored.
Keep policy: the two latest checkpoints always (so an unreadable latest one has a complete
predecessor to fall back to), plus every step divisible by `keep_every` when set.
"""

import functools
import os

import jax
import orbax.checkpoint as ocp

from ambient_jax import config as config_lib
from ambient_jax import files, nets


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into the expected state."""


def make_manager(workdir, keep_every=0, create=True):
    """create=False for readers (sampling, evaluation): no empty checkpoints/ left behind."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=2,
        keep_period=keep_every or None,
        enable_async_checkpointing=True,
        create=create,
    )
    return ocp.CheckpointManager(
        os.path.join(files.absolute(workdir), "checkpoints"), options=options
    )


def save(manager, step, state):
    manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)))


def restore_latest(manager, target, partial=False, log=print):
    """The latest restorable checkpoint in `target`'s structure, shapes and shardings; None if there
    is none. An unreadable latest checkpoint (truncated, corrupt) is skipped with a warning naming
    it and the step restored instead; CheckpointError when none can be restored.

    partial=True restores only the entries `target` names (e.g. a dict holding just
    "ema_params" for sampling), whatever else the checkpoint holds.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    failures = []
    for step in steps:
        if partial:
            restore = ocp.args.PyTreeRestore(
                item=abstract,
                partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            )
        else:
            restore = ocp.args.StandardRestore(abstract)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=restore))
        except Exception as err:  # orbax raises many types for a corrupt or foreign checkpoint
            detail = " ".join(str(err).split())
            failures.append((step, detail if len(detail) < 300 else detail[:300] + " ..."))
            continue
        if failures:
            log(
                f"warning: checkpoint step {failures[0][0]} in {manager.directory} cannot be "
                "restored "
                f"({failures[0][1]}); resuming from step {step} instead"
            )
        return restored.state
    raise CheckpointError(
        f"no checkpoint in {manager.directory} can be restored (steps "
        f"{', '.join(str(s) for s, _ in failures)}; latest: "
        f"{failures[0][1]}). If the run's network or optimizer changed, use a new --workdir; to "
        "start this one over, "
        "re-run with --restart."
    )


def load_ema_params(workdir, config=None):
    """(config, model, EMA params) of the latest checkpoint in a work dir (nothing else is read)."""
    config = config or config_lib.load_config(workdir)
    model = nets.build_network(config, config.data.channels)
    # The parameters' shapes, as the trainer initialises them (no computation, no memory).
    target = jax.eval_shape(
        functools.partial(nets.init_params, model, config_lib.image_shape(config)),
        jax.random.key(0),
    )
    missing = (
        f"no checkpoint in {workdir}/checkpoints: train first (ambient-train --workdir {workdir})"
    )
    if not files.exists(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(missing)
    restored = restore_latest(
        make_manager(workdir, create=False), {"ema_params": target}, partial=True
    )
    if restored is None:
        raise FileNotFoundError(missing)
    return config, model, restored["ema_params"]
