"""Checkpoints of the train state with orbax's CheckpointManager.

Saves are asynchronous and committed atomically by orbax (a step folder becomes visible to
`latest_step` only once its commit finished), so an interrupted save is never restored.
Keep policy: the latest checkpoint always, plus every step divisible by `keep_every` when set.
"""

import os

import jax
import orbax.checkpoint as ocp

from ambient_jax import files


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into the expected state."""


def make_manager(workdir, keep_every=0):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        keep_period=keep_every or None,
        enable_async_checkpointing=True,
        create=True,
    )
    return ocp.CheckpointManager(os.path.join(files.absolute(workdir), "checkpoints"), options=options)


def save(manager, step, state):
    manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)))


def restore_latest(manager, target, partial=False):
    """The latest checkpoint restored into `target`'s structure, shapes and shardings; None if there is none.

    partial=True restores only the entries `target` names (e.g. a dict holding just
    "ema_params" for sampling), whatever else the checkpoint holds.
    """
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    if partial:
        restore = ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                         restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
    else:
        restore = ocp.args.StandardRestore(abstract)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=restore))
    except Exception as err:  # orbax raises many types for a corrupt or foreign checkpoint
        detail = " ".join(str(err).split())
        detail = detail if len(detail) < 400 else detail[:400] + " ..."
        raise CheckpointError(
            f"cannot restore checkpoint step {step} in {manager.directory} ({detail}). "
            "If the run's network or optimizer changed, use a new --workdir; if the checkpoint is corrupt, "
            f"delete {os.path.join(str(manager.directory), str(step))} to fall back to an earlier one."
        ) from err
    return restored.state
