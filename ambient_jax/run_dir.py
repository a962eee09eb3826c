"""A training run's work dir: whether it may be resumed, starting over, restoring the latest
readable checkpoint, and the one error type of a run that cannot go on."""

import os
import shutil
import time

import flax.linen as nn
import jax
import optax
import orbax.checkpoint as ocp
from etils import epath

from ambient_jax import (
    checkpoint,
    files,
    parallel,
    summaries,
    train_state,
)
from ambient_jax import config as config_lib
from ambient_jax.types import Config, Log


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
