"""Checkpoints of the train state with orbax's CheckpointManager.

Saves are asynchronous and committed atomically by orbax (a step folder becomes visible to
`latest_step` only once its commit finished), so an interrupted save is never restored.
Keep policy: the two latest checkpoints always (so an unreadable latest one has a complete
predecessor to fall back to), plus every step divisible by `keep_every` when set.
"""

import contextlib
import logging
import os
import shutil
import sys
import threading

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from ambient_jax import config as config_lib
from ambient_jax import files
from ambient_jax.training import train_state
from ambient_jax.types import Config, Log, PyTree


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into the expected state."""


def make_manager(workdir: str, keep_every: int = 0, create: bool = True) -> ocp.CheckpointManager:
    """create=False for readers (sampling, evaluation): no empty checkpoints/ left behind."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=2,
        keep_period=keep_every or None,
        enable_async_checkpointing=True,
        create=create,
    )
    with _orbax_errors_unlogged():  # it reads every step's metadata; restore_latest says more
        return ocp.CheckpointManager(
            os.path.join(files.absolute(workdir), "checkpoints"), options=options
        )


def save(manager: ocp.CheckpointManager, step: int, state: PyTree) -> None:
    manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)))


def save_error(manager: ocp.CheckpointManager) -> str | None:
    """The cause, in one line, of an asynchronous save that failed (a full disk, a lost bucket),
    else None. orbax reports it only when asked (or at the next save)."""
    try:
        with _orbax_errors_unlogged():
            manager.check_for_errors()  # the write threads
            if not manager.is_saving_in_progress():  # the finalize thread: raises its error
                manager.wait_until_finished()
    except Exception as err:  # whatever the file system raised in orbax's threads
        text = " ".join(str(err).split()) or type(err).__name__
        return text if len(text) < 300 else text[:300] + " ..."
    return None


def space_needed(workdir: str, state: PyTree) -> str | None:
    """Where the file system tells its free space (a local work dir): a line saying that the
    checkpoint of `state` (its arrays' bytes, about what orbax writes) does not fit, else None."""
    if files.is_remote(workdir):
        return None
    need = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree_util.tree_leaves(state))
    folder = os.path.join(files.absolute(workdir), "checkpoints")
    free = shutil.disk_usage(folder if os.path.isdir(folder) else workdir).free
    if free >= 1.1 * need:
        return None
    return (
        f"{free / 2**20:.1f} MiB free on the disk of {workdir}, and a checkpoint needs about "
        f"{need / 2**20:.1f} MiB"
    )


def restore_latest(
    manager: ocp.CheckpointManager,
    target: PyTree,
    partial: bool = False,
    log: Log = print,
    set_aside: str | None = None,
) -> PyTree | None:
    """The latest restorable checkpoint in `target`'s structure, shapes and shardings; None if there
    is none. An unreadable latest checkpoint (truncated, corrupt) is skipped with a warning naming
    it and the step restored instead; CheckpointError when none can be restored.

    partial=True restores only the entries `target` names (e.g. a dict holding just
    "ema_params" for sampling), whatever else the checkpoint holds.

    set_aside (the trainer's, a folder): the unreadable steps above the restored one are moved
    there, never deleted, so the steps retrained after them are saved again and become the latest
    (left in place, a corrupt step stays the latest forever: every later run would retrain the
    same steps, and sampling would keep using the older one). Readers pass nothing and change
    nothing.
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
            with _orbax_errors_unlogged():
                restored = manager.restore(step, args=ocp.args.Composite(state=restore))
        except Exception as err:  # orbax raises many types for a corrupt or foreign checkpoint
            _ignore_reads_finishing_after_their_loop()
            detail = " ".join(str(err).split())
            failures.append((step, detail if len(detail) < 300 else detail[:300] + " ..."))
            continue
        if failures:
            log(
                f"warning: checkpoint step {failures[0][0]} in {manager.directory} cannot be "
                "restored "
                f"({failures[0][1]}); using step {step} instead"
            )
            if set_aside:
                _set_aside(manager, [s for s, _ in failures], set_aside, log)
        return restored.state
    raise CheckpointError(
        f"no checkpoint in {manager.directory} can be restored (steps "
        f"{', '.join(str(s) for s, _ in failures)}; latest: "
        f"{failures[0][1]}). If the run's network or optimizer changed, use a new --workdir; to "
        "start this one over, "
        "re-run with --restart."
    )


class OrbaxSaveErrorsUnlogged(logging.Filter):
    """Drops the error records (tracebacks) orbax's save threads log: the trainer reports a
    failed save itself, in one line (Run.confirm_saves). Installed on the absl logger while a
    run trains."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


@contextlib.contextmanager
def _orbax_errors_unlogged():
    """orbax logs its own error lines for a corrupt checkpoint; the warning above says it once."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _is_closed_loop_error(exc_type, exc_value):
    return exc_type is RuntimeError and str(exc_value) == "Event loop is closed"


def _ignore_reads_finishing_after_their_loop():
    """After a failed restore, orbax's other reads of that checkpoint still finish in
    tensorstore's threads and report to the event loop orbax already closed: tens of "RuntimeError:
    Event loop is closed" tracebacks on stderr, at any later moment. Those and only those are
    dropped, from here on."""
    if getattr(sys.excepthook, "drops_closed_loop_errors", False):
        return
    previous = sys.excepthook, threading.excepthook, sys.unraisablehook

    def excepthook(exc_type, exc_value, tb):
        if not _is_closed_loop_error(exc_type, exc_value):
            previous[0](exc_type, exc_value, tb)

    def thread_hook(args):
        if not _is_closed_loop_error(args.exc_type, args.exc_value):
            previous[1](args)

    def unraisable_hook(args):
        if not _is_closed_loop_error(args.exc_type, args.exc_value):
            previous[2](args)

    excepthook.drops_closed_loop_errors = True
    sys.excepthook, threading.excepthook, sys.unraisablehook = (
        excepthook,
        thread_hook,
        unraisable_hook,
    )
    # the same abandoned reads, when one fails after orbax stopped waiting for it: asyncio logs
    # "Task exception was never retrieved" with the read's traceback
    logging.getLogger("asyncio").addFilter(_AbandonedReadsUnlogged())


class _AbandonedReadsUnlogged(logging.Filter):
    """Drops asyncio's "exception was never retrieved" records (installed after a failed
    restore, whose other reads orbax no longer awaits)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in str(record.msg)


def _set_aside(manager, steps, folder, log):
    """Move the step folders `steps` into `folder` (lead process) and make every process's manager
    forget them."""
    if jax.process_index() == 0:
        files.makedirs(folder)
        for step in steps:
            source = os.path.join(str(manager.directory), str(step))
            target = os.path.join(folder, str(step))
            suffix = 1
            while files.exists(target):  # set aside before: keep both
                target, suffix = os.path.join(folder, f"{step}.{suffix}"), suffix + 1
            files.rename(source, target)
            log(f"moved the unreadable checkpoint step {step} to {target}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("checkpoints set aside")
    manager.reload()


def load_ema_params(workdir: str, config: Config | None = None) -> tuple[Config, nn.Module, PyTree]:
    """(config, model, EMA params) of the latest checkpoint in a work dir (nothing else is read)."""
    config = config or config_lib.load_config(workdir)
    model = train_state.network(config, config.data.channels)
    target = train_state.param_shapes(config, model)
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
    check_shapes(restored["ema_params"], target, workdir)
    return config, model, restored["ema_params"]


def check_shapes(restored: PyTree, target: PyTree, workdir: str) -> None:
    """CheckpointError naming the first parameter whose saved shape is not the one the config's
    network has (config.json edited after training: a flax shape traceback otherwise)."""
    saved = jax.tree_util.tree_flatten_with_path(restored)[0]
    wanted = jax.tree_util.tree_leaves(target)
    for (path, leaf), want in zip(saved, wanted):
        if tuple(leaf.shape) != tuple(want.shape):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            raise CheckpointError(
                f"the checkpoint in {workdir}/checkpoints does not fit the network of "
                f"{workdir}/config.json (parameter {name}: saved {tuple(leaf.shape)}, the config "
                f"gives {tuple(want.shape)}): data.resolution, data.channels or a model field "
                "was changed after training; restore it"
            )
