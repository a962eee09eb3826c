"""The training loop: the step, logging, sample grids, memorization tracking and checkpoints at
their intervals, SIGTERM/SIGINT handled by saving and returning.

The pieces live one per module: train_state (parameters, optimizer, EMA), train_step (one
step's keys, batch, rows and body), compiled_step (jit, pmap, scan), training_data (the subset
held or streamed) and run_dir (resume, restart, restore).
"""

import json
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax import checkpoint, files, parallel, plots, summaries
from ambient_jax import config as config_lib
from ambient_jax.data import check_subset_record
from ambient_jax.diffusion import generate
from ambient_jax.training import (
    compiled_step,
    run_dir,
    tracking,
    train_state,
    training_data,
    workdir_lock,
)
from ambient_jax.types import Config, Log, PyTree


def next_event(step: int, config: Config) -> int:
    """The first step after `step` at which the loop logs, samples, tracks, saves or stops."""
    t = config.train
    intervals = [e for e in (t.log_every, t.sample_every, t.checkpoint_every, t.track_every) if e]
    return min([(step // every + 1) * every for every in intervals] + [t.num_steps])


@jax.jit
def _finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def all_finite(tree: PyTree) -> bool:
    """Whether every value of the tree is finite: one compiled reduction (not a dispatch and a
    compile per leaf)."""
    return bool(jax.device_get(_finite(tree)))


def due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (every `every` steps, and at the last step) falls at `step`."""
    return (every and step % every == 0) or step == total


class LogWindow:
    """The metrics summed since the last log line, and the time they took."""

    def __init__(self):
        self.start()

    def start(self) -> None:
        self.sums: dict[str, jax.Array] | None = None
        self.steps, self.started = 0, time.perf_counter()

    def add(self, metrics: dict[str, jax.Array], steps: int) -> None:
        self.sums = (
            metrics if self.sums is None else jax.tree_util.tree_map(jnp.add, self.sums, metrics)
        )
        self.steps += steps

    def close(self, batch_size: int) -> tuple[dict[str, float], float]:
        """(the mean of each metric, images per second), and a new window begins."""
        means = {k: float(v) / self.steps for k, v in jax.device_get(self.sums).items()}
        rate = self.steps * batch_size / (time.perf_counter() - self.started)
        self.start()
        return means, rate


class Run:
    """One training run's outputs: metrics.jsonl, TensorBoard events, sample grids, checkpoints.
    Only the lead process writes files; every process takes part in sampling and saving."""

    def __init__(self, config, workdir, model, mesh, manager, lead, log):
        self.config, self.workdir, self.model, self.mesh, self.manager = (
            config,
            workdir,
            model,
            mesh,
            manager,
        )
        self.lead, self.log = lead, log
        self.metrics_path = summaries.metrics_path(workdir)
        self.events = summaries.Summaries(workdir) if lead else None
        self.sample_fn = generate.make_sample_fn(config, model, mesh)
        self.last_saved = manager.latest_step()  # the last checkpoint known to be written
        self.unconfirmed: int | None = None  # a save under way, its success not yet known
        self.save_failed = False
        self.step = 0
        self.quiet_orbax = checkpoint.OrbaxSaveErrorsUnlogged()
        logging.getLogger("absl").addFilter(self.quiet_orbax)
        self.t_start = time.perf_counter()

    def write_log(self, step: int, window: LogWindow) -> None:
        total, batch = self.config.train.num_steps, self.config.train.batch_size
        steps = window.steps
        means, rate = window.close(batch)
        if not np.isfinite(means["loss"]):
            self.manager.wait_until_finished()
            kept = (
                f"The last good checkpoint (step {self.last_saved}) is kept"
                if self.last_saved is not None
                else "No checkpoint was written yet, so a corrected re-run starts from step 0"
            )
            raise run_dir.TrainingError(
                f"the loss became {means['loss']} between steps {step - steps} and {step}. {kept}. "
                "Lower optim.lr, set optim.grad_clip (e.g. 1.0) or use loss.weighting=edm, then "
                "re-run."
            )
        if self.lead:
            record = {
                "step": step,
                **means,
                "images_per_s": rate,
                "seconds": time.perf_counter() - self.t_start,
            }
            files.append_line(self.metrics_path, json.dumps(record))
            self.events.scalars(step, record, "train")
        self.log(
            f"step {step}/{total}  loss {means['loss']:.4f} (clean {means['loss_clean']:.4f}, "
            "ambient "
            f"{means['loss_ambient']:.4f})  {rate:.0f} img/s  ETA "
            f"{(total - step) * batch / rate:.0f}s"
        )

    def save_samples(self, step: int, ema_params: PyTree) -> None:
        size = self.config.sample.grid_size
        picture = generate.generate(
            self.config,
            self.model,
            ema_params,
            size**2,
            seed=self.config.sample.seed,
            batch_size=size**2,
            sample_fn=self.sample_fn,
            mesh=self.mesh,
        )
        if self.lead:
            plots.save_grid(
                picture, os.path.join(self.workdir, "samples", f"grid_{step:07d}.png"), size
            )
            self.events.image(step, "samples", plots.tile(picture, size))

    def track(self, step: int, tracker: tracking.Tracker, ema_params: PyTree) -> None:
        record = tracker(ema_params, step)
        if self.lead:
            files.append_line(
                self.metrics_path,
                json.dumps({"step": step, **record, "seconds": time.perf_counter() - self.t_start}),
            )
            self.events.scalars(
                step, {k[len("track_") :]: v for k, v in record.items()}, "tracking"
            )
        self.log(
            f"step {step}/{self.config.train.num_steps}  tracking: "
            + "  ".join(f"{k[len('track_') :]} {v:.4g}" for k, v in record.items())
        )

    def save_checkpoint(self, step: int, state: train_state.TrainState) -> None:
        if not all_finite(state.params):
            self.manager.wait_until_finished()
            raise run_dir.TrainingError(
                f"the parameters are not finite at step {step}; the last good checkpoint (step "
                f"{self.last_saved}) "
                "is kept. Lower optim.lr or set optim.grad_clip, then re-run to resume from it."
            )
        self.finish_saves(step)  # orbax would wait for the previous save before this one anyway
        short = checkpoint.space_needed(self.workdir, state)
        if short:
            raise run_dir.TrainingError(
                f"not saving the checkpoint of step {step}: {short}. {self._kept()} Free some "
                "space (or use a work dir on another disk) and re-run the same command."
            )
        checkpoint.save(self.manager, step, state)
        self.unconfirmed = step

    def finish_saves(self, step: int) -> None:
        """Wait for the save under way; TrainingError (one line) if it failed."""
        if self.unconfirmed is None:
            return
        try:
            self.manager.wait_until_finished()
            waited = None
        except Exception as err:  # orbax re-raises its thread's error here or when asked
            waited = " ".join(str(err).split()) or type(err).__name__
        self.confirm_saves(step, waited)  # finished: confirmed there, or the error raised

    def confirm_saves(self, step: int, cause: str | None = None) -> None:
        """Stop the run (one TrainingError) as soon as the save under way is known to have
        failed: no more training that the user believes saved."""
        self.step = max(step, self.step)  # where training is (close reports it)
        if self.unconfirmed is None:
            return
        done = not self.manager.is_saving_in_progress()  # asked first: a failure after it waits
        cause = checkpoint.save_error(self.manager) or cause
        if cause:
            failed, self.unconfirmed, self.save_failed = self.unconfirmed, None, True
            raise run_dir.TrainingError(
                f"the checkpoint of step {failed} could not be written ({cause[:300]}); training "
                f"stopped at step {step}. {self._kept()} Fix the cause (free space?) and re-run "
                "the same command to resume."
            )
        if done:  # written: no more asking at every step
            self.last_saved, self.unconfirmed = self.unconfirmed, None

    def _kept(self) -> str:
        if self.last_saved is None:
            return "No checkpoint was written before, so the re-run starts from step 0."
        return f"The last good checkpoint (step {self.last_saved}) is kept."

    def close(self) -> None:
        try:  # a failed save was said once, by confirm_saves; orbax would raise it again here
            if not self.save_failed:
                self.finish_saves(self.step)  # confirmed before the run is done
                self.manager.wait_until_finished()
        finally:
            logging.getLogger("absl").removeFilter(self.quiet_orbax)
            if self.events:
                try:
                    self.events.close()
                except OSError:  # the same full disk: the failed save's line says it
                    if not self.save_failed:
                        raise


def train(
    config: Config,
    workdir: str,
    allow_config_change: bool = False,
    log: Log = print,
    restart: bool = False,
) -> train_state.TrainState:
    """Train (or resume) the run in `workdir`; returns the final TrainState (as checkpoints hold
    it).

    A work dir whose metrics.jsonl logged steps but which holds no checkpoint (they were deleted)
    is not silently trained from step 0 again: that takes restart=True (--restart), which also
    starts over a run whose checkpoints cannot be restored.

    SIGTERM (how TPU and Slurm pre-emption announce themselves) and SIGINT (Ctrl-C) save a
    checkpoint at the current step and return cleanly; re-running the command resumes from it.
    """
    config = config_lib.complete(config)
    if config.model.overrides.get("label_dim"):
        raise run_dir.TrainingError(
            "model.overrides.label_dim > 0 (a class-conditional network, e.g. a converted EDM "
            "snapshot): the trainer does not feed class labels yet; sample it with ambient-sample "
            "(--class) and evaluate it with ambient-eval"
        )
    parallel.initialize(config.parallel)
    lead = jax.process_index() == 0  # only one process writes the run's files
    run_dir.check_workdir(config, workdir, allow_config_change or restart, restart)
    training = training_data.TrainingData(config)  # bad data fails here, before anything is written
    if not (run_dir.has_checkpoint(workdir) and not restart):
        run_dir.check_init_source(config)  # a trained run to start from that does not fit, too
    training_data.warn_if_few_heldout(config, training, log if lead else lambda _: None)
    if training.corrupted is not None and lead:
        _, sigma_tn, clean, _, sigma_max = training.corrupted
        kind = config.data.corrupt_kind
        what = (
            f"digits of classes {tuple(config.data.corrupt_classes)}"
            if kind == "classes"
            else f"{kind} {config.data.corrupt_level:g}"
        )
        bounded = np.isfinite(sigma_max)
        noun, they = (
            ("other", "the others") if kind == "classes" else ("corrupted", "the corrupted")
        )
        parts = [
            "used as if clean"
            if clean.all()
            else f"at sigma_tn {np.median(sigma_tn):.3g} (median; {config.data.corrupt_sigma_tn})"
        ]
        if bounded.any():
            parts.append(
                f"{bounded.sum()} only up to sigma_max {np.median(sigma_max[bounded]):.3g} "
                f"(median; {config.data.corrupt_sigma_max})"
            )
        if not clean.all() or bounded.any():
            parts.append(f"batches drawn {config.data.corrupt_sampling}")
        if bounded.any() and config.data.bounded_share != -1.0:
            parts.append(
                f"{config.data.bounded_share:g} of a level's rows to those with a sigma_max "
                "where both kinds are usable"
            )
        log(
            f"data of mixed quality: {len(training.images)} clean and {len(sigma_tn)} {noun} "
            f"images ({what}), {they} " + ", ".join(parts)
        )
    resuming = not restart and run_dir.has_checkpoint(workdir)
    # A changed config (--allow_config_change) is recorded once a checkpoint exists under it, so a
    # failed attempt leaves the work dir with the settings that worked.
    config_to_record = resuming and bool(
        config_lib.config_differences(config_lib.load_config(workdir), config)
    )
    if resuming and files.exists(os.path.join(workdir, "subset.json")):
        check_subset_record(workdir, training.train_indices)
    lock = workdir_lock.acquire(workdir, log) if lead else None  # one writer per work dir
    try:
        if not (restart or resuming):
            run_dir.check_no_orphan_metrics(workdir)
        if restart and lead:
            run_dir.start_over(workdir, log)
        mesh = parallel.make_mesh(config.parallel)
        model = train_state.network(config, config.data.channels)
        optimizer, schedule = train_state.make_optimizer(config.optim, config.train.batch_size)
        trainer = compiled_step.Trainer(config, model, optimizer, schedule, mesh)
        if lead:
            files.makedirs(os.path.join(workdir, "samples"))
            if not config_to_record:
                config_lib.save_config(workdir, config)
            training.record(workdir, config)
        training.place(mesh)
        manager = checkpoint.make_manager(workdir, config.train.keep_every)
        state = run_dir.restore_or_init(config, workdir, model, optimizer, mesh, manager, lead, log)
        run = Run(config, workdir, model, mesh, manager, lead, log)
        t = config.train
        tracker = (
            tracking.Tracker(config, model, training.images, training.heldout, run.sample_fn, mesh)
            if t.track_every
            else None
        )
        # XLA's CPU collectives can deadlock when several multi-device steps are in flight on few
        # cores (seen with 8 fake devices on 2 cores), so CPU meshes wait for each step.
        sync_each_step = mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"
        terminated = []
        previous_handler = _on_sigterm(
            lambda signum, _: terminated.append(signal.Signals(signum).name)
        )
        try:
            step, window = int(jax.device_get(state.step)), LogWindow()
            while step < t.num_steps:
                # Several steps per dispatch where no log, sample or checkpoint falls inside them.
                fused = trainer.multi_step and step + trainer.steps_per_dispatch <= next_event(
                    step, config
                )
                count = trainer.steps_per_dispatch if fused else 1
                state, metrics = (trainer.multi_step if fused else trainer.step)(
                    state, training.for_step(step)
                )
                if sync_each_step:
                    jax.block_until_ready(metrics)
                window.add(metrics, count)
                step += count
                run.confirm_saves(step)
                if due(step, t.log_every, t.num_steps):
                    run.write_log(step, window)
                if due(step, t.sample_every, t.num_steps):
                    run.save_samples(step, state.ema_params)
                if tracker and step % t.track_every == 0:
                    run.track(step, tracker, state.ema_params)
                if due(step, t.checkpoint_every, t.num_steps) or terminated:
                    run.save_checkpoint(step, state)
                    if config_to_record and lead:
                        manager.wait_until_finished()
                        config_lib.save_config(workdir, config)
                        config_to_record = False
                    if tracker and lead:
                        tracking.Tracker.save_plot(workdir)
                if terminated:
                    log(
                        f"{terminated[0]}: saved a checkpoint at step {step}; re-run the same "
                        "command to resume"
                    )
                    break
        finally:
            _on_sigterm(previous_handler)
            run.close()
        return state
    finally:
        if lock:
            workdir_lock.release(lock)


def _on_sigterm(handler):
    """Install `handler` for SIGTERM and SIGINT (main thread only); returns the previous ones."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    if isinstance(handler, tuple):  # restoring what was there
        signal.signal(signal.SIGTERM, handler[0])
        signal.signal(signal.SIGINT, handler[1])
        return None
    return signal.signal(signal.SIGTERM, handler), signal.signal(signal.SIGINT, handler)
