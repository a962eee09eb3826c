"""A training run's work dir: whether it may be resumed, starting over, restoring the latest
readable checkpoint, and the one error type of a run that cannot go on."""

import dataclasses
import os
import shutil
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from etils import epath

from ambient_jax import checkpoint, files, parallel, summaries
from ambient_jax import config as config_lib
from ambient_jax.training import finetune, train_state
from ambient_jax.types import Config, Log, PyTree


class TrainingError(RuntimeError):
    """Training cannot go on (a diverged loss, a work dir of another run); the message says what to
    do."""


def has_checkpoint(workdir: str) -> bool:
    if not files.exists(os.path.join(workdir, "checkpoints")):
        return False
    return checkpoint.make_manager(workdir, create=False).latest_step() is not None


def check_workdir(
    config: Config, workdir: str, allow_config_change: bool = False, restart: bool = False
) -> None:
    """Refuse to resume a run of another config unless told; writes nothing. A saved config binds
    only once a checkpoint exists: a run that failed before its first one did not train under it."""
    config_lib.check_config(config)
    if files.exists(os.path.join(workdir, config_lib.CONFIG_NAME)) and has_checkpoint(workdir):
        if not restart and not config_lib.noise_keyed_by_source(workdir):
            raise TrainingError(
                f"work dir {workdir!r} holds a run whose noisy copies were keyed by train.seed and "
                "subset position (before loss.noise_seed): this version keys them by source "
                "index, so resuming would train on other copies. Use a new --workdir or --restart."
            )
        changed = config_lib.config_differences(config_lib.load_config(workdir), config)
        if changed and not allow_config_change:
            raise TrainingError(
                f"work dir {workdir!r} holds a run with another config (fields differ: "
                f"{', '.join(changed)}). "
                "Use a new --workdir, or pass --allow_config_change to resume it with the new "
                "values."
            )


def start_over(workdir: str, log: Log) -> None:
    """--restart: delete the checkpoints and set the old metrics.jsonl aside
    (metrics.<time>.jsonl)."""
    folder = epath.Path(files.absolute(workdir)) / "checkpoints"
    if folder.exists():
        shutil.rmtree(folder) if not files.is_remote(workdir) else folder.rmtree()
    metrics = summaries.metrics_path(workdir)
    if files.exists(metrics):
        aside = os.path.join(workdir, f"metrics.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        epath.Path(metrics).rename(aside)
        log(f"--restart: deleted the checkpoints; the old metrics are kept as {aside}")


# where the trainer moves checkpoint steps it cannot restore (never deleted)
UNREADABLE_CHECKPOINTS = "unreadable_checkpoints"


def restore_or_init(
    config: Config,
    workdir: str,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    manager: ocp.CheckpointManager,
    lead: bool,
    log: Log,
) -> train_state.TrainState:
    """The latest checkpoint's state (metrics.jsonl rows logged after it are dropped), or a fresh
    one."""
    fresh = parallel.place_replicated(train_state.init_state(config, model, optimizer), mesh)
    restored = checkpoint.restore_latest(
        manager, fresh, log=log, set_aside=os.path.join(workdir, UNREADABLE_CHECKPOINTS)
    )
    if restored is None:
        if config.finetune.init_from:
            return start_from(config, workdir, fresh, optimizer, mesh, lead, log)
        return fresh
    step = int(restored.step)
    log(f"resumed from step {step} in {workdir}")
    metrics_path = summaries.metrics_path(workdir)
    if lead and files.exists(metrics_path):  # rows a killed run logged after its last checkpoint
        dropped = summaries.drop_rows_after(metrics_path, step)
        if dropped:
            log(
                f"dropped {dropped} metrics.jsonl rows past step {step} (logged after that "
                "checkpoint)"
            )
    return restored


def check_no_orphan_metrics(workdir: str) -> None:
    """A work dir that logged steps but holds no checkpoint (they were deleted) is not silently
    trained from step 0 again."""
    orphan_steps = summaries.logged_steps(summaries.metrics_path(workdir))
    if orphan_steps:
        raise TrainingError(
            f"work dir {workdir} logged training up to step {max(orphan_steps)} but holds no "
            "checkpoint (were they deleted?). Re-run with --restart to train it from step 0 (the "
            "old metrics.jsonl "
            "is set aside), or use a new --workdir."
        )


def _source_shapes(config: Config) -> tuple[PyTree, optax.GradientTransformation]:
    """(the trained run's parameter shapes, its optimizer), nothing read but
    finetune.init_from's config.json."""
    source = config.finetune.init_from
    source_config = config_lib.load_config(source)
    model = train_state.network(source_config, source_config.data.channels)
    shapes = train_state.param_shapes(source_config, model)
    optimizer, _ = train_state.make_optimizer(source_config.optim, source_config.train.batch_size)
    return shapes, optimizer


def check_init_source(config: Config) -> None:
    """finetune.init_from: the trained run exists, holds a checkpoint, and its network fits this
    config's, parameter by parameter (shapes only; ValueError naming the first that differs).
    Reads no weights and writes nothing."""
    source = config.finetune.init_from
    if not source:
        return
    if not has_checkpoint(source):
        raise TrainingError(
            f"finetune.init_from = {source!r} holds no checkpoint: give the work dir of a trained "
            "run (ambient-train --workdir=... first)"
        )
    shapes, _ = _source_shapes(config)
    target = train_state.param_shapes(config, train_state.network(config, config.data.channels))
    finetune.graft(shapes, target, source)


def start_from(
    config: Config,
    workdir: str,
    fresh: train_state.TrainState,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    lead: bool,
    log: Log,
) -> train_state.TrainState:
    """The first state of a run started from finetune.init_from: its latest EMA weights in the
    parameters and their EMA (both halves of a network split at finetune.train_above), its Adam
    state with finetune.keep_optimizer (else `fresh`'s), step 0. Writes init.json (where it
    started: path and step)."""
    source = config.finetune.init_from
    shapes, source_optimizer = _source_shapes(config)
    wanted = {"ema_params": shapes, "step": jax.ShapeDtypeStruct((), jnp.int32)}
    if config.finetune.keep_optimizer:
        wanted["opt_state"] = jax.eval_shape(source_optimizer.init, shapes)
    restored = checkpoint.restore_latest(
        checkpoint.make_manager(source, create=False), wanted, partial=True, log=log
    )
    if restored is None:
        raise TrainingError(f"finetune.init_from = {source!r} holds no checkpoint")
    # Every leaf in a buffer of its own: both halves of a split network come from one source
    # leaf, and the step donates the parameters, their EMA and the optimizer state.
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)
    params = copy(finetune.graft(restored["ema_params"], fresh.params, source))
    opt_state = (
        copy(finetune.graft(restored["opt_state"], fresh.opt_state, source))
        if config.finetune.keep_optimizer
        else fresh.opt_state
    )
    state = parallel.place_replicated(
        dataclasses.replace(fresh, params=params, ema_params=copy(params), opt_state=opt_state),
        mesh,
    )
    step = int(restored["step"])
    record = {
        "init_from": files.absolute(source),
        "step": step,
        "keep_optimizer": bool(config.finetune.keep_optimizer),
        "keep_ema": bool(config.finetune.keep_ema),
        "train_above": float(config.finetune.train_above),
    }
    if lead:
        files.write_json_atomic(os.path.join(workdir, finetune.INIT_RECORD), record)
    log(
        f"started from {source} (step {step}): its EMA weights"
        + (", its Adam state" if config.finetune.keep_optimizer else "")
        + (
            f"; levels below {config.finetune.train_above:g} keep them, frozen"
            if config.finetune.train_above
            else ""
        )
    )
    return state
