"""Training: the train state, the compiled train step and the training loop.

One step (EDM's training loop, Karras et al. 2022, with the objective of ambient_jax.losses):
  indices b -> image i_b drawn uniformly from the training subset held on device,
  per-row keys fold_in(step key, b) -> noise level, fresh noise, branch (losses.make_objective),
  loss = mean_b loss_b -> grads -> Adam with linear warm-up -> EMA of the parameters:
      beta = 0.5 ** (batch / halflife_img),  halflife_img = min(halflife_kimg * 1000,
                                                               rampup_ratio * images seen).
Every key is fold_in(key(train.seed), purpose, step, row): nothing random is stored, so a
resumed run repeats an uninterrupted one bit for bit.
"""

import functools
import json
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ambient_jax import (checkpoint, config as config_lib, files, generate, losses, nets, parallel, plots, summaries,
                         tracking, workdir_lock)
from ambient_jax.data import DataError, load_split, read_subset_record, record_subset
from ambient_jax.precond import edm_denoiser

# fold_in purposes of the root key
KEY_INIT, KEY_STEP, KEY_NOISE_TN = 0, 1, 2
# fold_in purposes of a step's key (fold_in(fold_in(root, KEY_STEP), step)): the batch's image
# indices, the per-row keys of the objective (sigma and noise draws), dropout, horizontal flips
STEP_BATCH, STEP_ROWS, STEP_DROPOUT, STEP_FLIP = 0, 1, 2, 3


class TrainingError(RuntimeError):
    """Training cannot go on (a diverged loss, a work dir of another run); the message says what to do."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def root_key(config):
    return jax.random.key(config.train.seed)


def learning_rate_schedule(optim_config, batch_size):
    """lr * min(images seen / warm-up images, 1), counted after the step (EDM's ramp-up)."""
    warmup_img = optim_config.warmup_kimg * 1000.0

    def schedule(step):
        seen = (step + 1) * batch_size
        ramp = jnp.minimum(seen / warmup_img, 1.0) if warmup_img > 0 else 1.0
        return optim_config.lr * ramp

    return schedule


def make_optimizer(optim_config, batch_size):
    """Adam(W) with linear warm-up and optional global-norm clipping.

    The chain has the same structure for every setting (clipping off = identity, no decay =
    AdamW with decay 0), so a run resumed with other optimizer values restores its state.
    """
    schedule = learning_rate_schedule(optim_config, batch_size)
    clip = optax.clip_by_global_norm(optim_config.grad_clip) if optim_config.grad_clip else optax.identity()
    adam = optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                       weight_decay=optim_config.weight_decay)
    return optax.chain(clip, adam), schedule


def ema_beta(step, batch_size, ema_config):
    """EDM's EMA decay for the update made at `step` (0-based)."""
    halflife = ema_config.halflife_kimg * 1000.0
    if ema_config.rampup_ratio:
        halflife = jnp.minimum(halflife, (step + 1) * batch_size * ema_config.rampup_ratio)
    return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def ema_update(ema_params, params, beta):
    """The EMA after one step: beta * ema + (1 - beta) * params, leaf by leaf."""
    return jax.tree_util.tree_map(lambda e, p: beta * e + (1 - beta) * p, ema_params, params)


def init_state(config, model, optimizer):
    key = jax.random.fold_in(root_key(config), KEY_INIT)
    params = jax.jit(functools.partial(nets.init_params, model, config_lib.image_shape(config)))(key)
    ema_params = jax.tree_util.tree_map(jnp.copy, params)  # its own buffers: the step donates both
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params, opt_state=optimizer.init(params))


def step_root_key(config):
    return jax.random.fold_in(root_key(config), KEY_STEP)


def batch_indices(step_root, step, batch_size, num_images):
    """Which training images (positions in the subset) make up the global batch of `step`."""
    key = jax.random.fold_in(jax.random.fold_in(step_root, step), STEP_BATCH)
    return jax.random.randint(key, (batch_size,), 0, num_images)


def noise_tn_key(config):
    """The key of the fixed noise of S_tn (losses.fixed_noise)."""
    return jax.random.fold_in(root_key(config), KEY_NOISE_TN)


def noisy_training_copies(config, images):
    """S_tn as the run trains on it: x_tn for every training image (position i in the subset)."""
    images = jnp.asarray(images, jnp.float32)
    index = jnp.arange(images.shape[0])
    return losses.noisy_copy(images, index, config_lib.effective_sigma_tn(config), noise_tn_key(config))


def flip_rows(x0, flip):
    """Mirror the rows b with flip[b] left to right (NHWC: the W axis)."""
    return jnp.where(flip[:, None, None, None], x0[:, :, ::-1], x0)


def make_step_body(config, model, optimizer, schedule, axis_name=None, num_shards=1):
    """The one train-step body: (state, images [n,H,W,C], shard) -> (state, metrics).

    The global batch's draws (image indices, flips, per-row keys) depend only on (seed, step,
    row), never on how rows are split over devices. Under jit the body sees the whole global
    batch (XLA shards it over the mesh); under pmap (axis_name set) each device takes its
    `shard` of rows and the gradients and metrics are averaged with explicit pmean/psum.
    """
    batch_size = config.train.batch_size
    rows = batch_size // num_shards
    objective = losses.make_objective(
        config.loss.objective,
        sigma_tn=config.loss.sigma_tn,
        branch_rule=config.loss.branch_rule,
        weighting=config.loss.weighting,
        noise_key=noise_tn_key(config),
        p_mean=config.loss.p_mean,
        p_std=config.loss.p_std,
        sigma_data=config.loss.sigma_data,
        sigma_switch=config.loss.sigma_switch,
        rescale_cap=config.loss.rescale_cap,
        ambient_fraction=config.loss.ambient_fraction,
    )
    step_root = step_root_key(config)

    def body(state, data, shard=0, batch_sharding=None):
        """data: the training images [n,H,W,C] held on device, or a streamed (x0, index) global batch."""
        step_key = jax.random.fold_in(step_root, state.step)
        k_rows, k_dropout, k_flip = (jax.random.fold_in(step_key, p) for p in (STEP_ROWS, STEP_DROPOUT, STEP_FLIP))
        if isinstance(data, tuple):
            x0, index = data
        else:
            index = batch_indices(step_root, state.step, batch_size, data.shape[0])
        flip = jax.random.bernoulli(k_flip, 0.5, (batch_size,))
        row_keys = jax.vmap(lambda b: jax.random.fold_in(k_rows, b))(jnp.arange(batch_size))
        if num_shards > 1:  # this device's rows of the global batch
            take = lambda a: jax.lax.dynamic_slice_in_dim(a, shard * rows, rows)
            index, flip, row_keys = take(index), take(flip), take(row_keys)
            k_dropout = jax.random.fold_in(k_dropout, shard)
        if not isinstance(data, tuple):
            x0 = data[index]
        if config.data.augment_flip:
            x0 = flip_rows(x0, flip)
        if batch_sharding is not None:
            x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)

        def loss_fn(params):
            raw = lambda x, c: model.apply(params, x, c, train=True, rngs={"dropout": k_dropout})
            per_row, aux = objective(edm_denoiser(raw, config.loss.sigma_data), x0, index, row_keys)
            return jnp.mean(per_row), (per_row, aux)

        (loss, (per_row, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        amb = aux["is_ambient"].astype(jnp.float32)
        sums = {"ambient": jnp.sum(per_row * amb), "clean": jnp.sum(per_row * (1 - amb)), "n_ambient": jnp.sum(amb)}
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
            sums = jax.lax.psum(sums, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, ema_beta(state.step, batch_size, config.ema))
        metrics = {
            "loss": loss,
            "loss_clean": sums["clean"] / jnp.maximum(batch_size - sums["n_ambient"], 1.0),
            "loss_ambient": sums["ambient"] / jnp.maximum(sums["n_ambient"], 1.0),
            "frac_ambient": sums["n_ambient"] / batch_size,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
        }
        return TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

    return body


class Trainer:
    """The compiled step for parallel.mode, and the conversions its state needs.

    jit:  state and images replicated over the mesh, the batch sharded on "data"; the state is
          donated and comes back replicated.
    pmap: state and images copied to every local device (leading device axis); checkpoints
          hold the single copy (`to_saved` / `from_saved`).
    """

    def __init__(self, config, model, optimizer, schedule, mesh):
        parallel.check_batch(config.train.batch_size, mesh)
        self.mode, self.mesh = config.parallel.mode, mesh
        if config.data.streaming and self.mode != "jit":
            raise ValueError("data.streaming needs parallel.mode=jit")
        self.steps_per_dispatch = int(config.train.steps_per_dispatch)
        if config.data.streaming and self.steps_per_dispatch > 1:
            raise ValueError("train.steps_per_dispatch > 1 needs the training images on device (data.streaming=False)")
        self.multi_step = None
        if self.mode == "jit":
            body = make_step_body(config, model, optimizer, schedule)
            repl, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
            step = functools.partial(body, batch_sharding=rows)
            data = (rows, rows) if config.data.streaming else repl
            self.step = jax.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)
            if self.steps_per_dispatch > 1:
                self.multi_step = jax.jit(scan_steps(step, self.steps_per_dispatch), in_shardings=(repl, data),
                                          out_shardings=(repl, repl), donate_argnums=0)
        elif self.mode == "pmap":
            if jax.process_count() > 1:
                raise ValueError("parallel.mode=pmap runs on one host here; use parallel.mode=jit across hosts")
            self.devices = list(mesh.devices.flat)
            body = make_step_body(config, model, optimizer, schedule, axis_name=parallel.DATA_AXIS, num_shards=mesh.size)
            per_device = lambda state, images: body(state, images, jax.lax.axis_index(parallel.DATA_AXIS))
            pmap = functools.partial(jax.pmap, axis_name=parallel.DATA_AXIS, devices=self.devices, donate_argnums=0)
            self.step = pmap(per_device)
            if self.steps_per_dispatch > 1:
                self.multi_step = pmap(scan_steps(per_device, self.steps_per_dispatch))
        else:
            raise ValueError(f"parallel.mode must be 'jit' or 'pmap', got {self.mode!r}")

    def place(self, tree):
        """Host or single-device arrays -> what the step takes."""
        if self.mode == "jit":
            return jax.tree_util.tree_map(lambda a: parallel.global_replicated(np.asarray(a), self.mesh), tree)
        # One copy per device along a leading axis, as pmap takes its arguments.
        copies = parallel.batch_sharded(self.mesh)
        n = self.mesh.size
        return jax.tree_util.tree_map(lambda a: jax.device_put(np.broadcast_to(np.asarray(a), (n, *np.shape(a))), copies), tree)

    def to_saved(self, state):
        """The state as checkpoints hold it (one copy, replicated over the mesh)."""
        return state if self.mode == "jit" else jax.tree_util.tree_map(lambda a: a[0], state)

    def metrics(self, metrics):
        return metrics if self.mode == "jit" else jax.tree_util.tree_map(lambda m: m[0], metrics)


def scan_steps(step, count):
    """`count` steps in one dispatch (lax.scan): metrics come back summed over the steps. Each
    step's draws depend on state.step only, so this trains the same model as `count` calls."""

    def steps(state, data):
        state, metrics = jax.lax.scan(lambda st, _: step(st, data), state, None, length=count)
        return state, jax.tree_util.tree_map(lambda m: jnp.sum(m, axis=0), metrics)

    return steps


def next_event(step, config):
    """The first step after `step` at which the loop logs, samples, tracks, saves or stops."""
    t = config.train
    intervals = [e for e in (t.log_every, t.sample_every, t.checkpoint_every, t.get("track_every", 0)) if e]
    return min([(step // every + 1) * every for every in intervals] + [t.num_steps])


def all_finite(tree):
    return bool(jax.device_get(jax.tree_util.tree_reduce(
        lambda a, b: a & b, jax.tree_util.tree_map(lambda x: jnp.all(jnp.isfinite(x)), tree))))


def has_checkpoint(workdir):
    if not files.exists(os.path.join(workdir, "checkpoints")):
        return False
    return checkpoint.make_manager(workdir, create=False).latest_step() is not None


def check_workdir(config, workdir, allow_config_change=False):
    """Refuse to resume a run of another config unless told; writes nothing. A saved config binds
    only once a checkpoint exists: a run that failed before its first one did not train under it."""
    config_lib.check_config(config)
    if files.exists(os.path.join(workdir, config_lib.CONFIG_NAME)) and has_checkpoint(workdir):
        changed = config_lib.config_differences(config_lib.load_config(workdir), config)
        if changed and not allow_config_change:
            raise TrainingError(
                f"work dir {workdir!r} holds a run with another config (fields differ: {', '.join(changed)}). "
                "Use a new --workdir, or pass --allow_config_change to resume it with the new values."
            )


class TrainingData:
    """The training subset, held on device (default) or streamed batch by batch (data.streaming)."""

    def __init__(self, config):
        self.config = config
        self.heldout = None
        if not config.data.streaming:
            split = load_split(config.data)
            self.images, self.train_indices, self.heldout = split.train, split.train_indices, split.heldout
            want = config_lib.image_shape(config)
            if tuple(self.images.shape[1:]) != want:
                raise DataError(
                    f"the {config.data.source} source gives images of shape {tuple(self.images.shape[1:])} but the config "
                    f"asks for {want} (data.resolution, data.resolution, data.channels): set data.channels="
                    f"{self.images.shape[-1]} or use a source with {want[-1]}-channel images")
            self.num_source_images = len(split.train) + len(split.heldout)
            return
        if config.data.source != "tfds":
            raise ValueError("data.streaming reads a tfds source: set data.source=tfds (mnist and folders fit on device)")
        from ambient_jax.data.subset import choose_subset
        from ambient_jax.data.tfds_source import open_source

        self.num_source_images = len(open_source(config.data))
        self.train_indices = choose_subset(self.num_source_images, config.data.n_train, config.data.subset_seed)
        self.images = None

    def place(self, trainer):
        if self.images is not None:
            self.on_device = trainer.place(self.images)
            return
        from ambient_jax.data.tfds_source import StreamingBatches

        root, batch, n = step_root_key(self.config), self.config.train.batch_size, len(self.train_indices)
        host_indices = jax.jit(lambda step: batch_indices(root, step, batch, n))
        self.mesh = trainer.mesh
        self.stream = StreamingBatches(self.config.data, self.train_indices, lambda s: np.asarray(host_indices(s)),
                                       batch, jax.process_index(), jax.process_count())

    def for_step(self, step):
        if self.images is not None:
            return self.on_device
        x0, index = self.stream.rows_for(step)
        return parallel.global_batch(x0, self.mesh), parallel.global_batch(index.astype(np.int32), self.mesh)


def logged_steps(metrics_path):
    """The training steps logged in metrics.jsonl (empty when there is none)."""
    if not files.exists(metrics_path):
        return []
    return [json.loads(line)["step"] for line in files.read_text(metrics_path).splitlines() if line.strip()]


def drop_rows_after(metrics_path, step):
    """Remove metrics.jsonl rows past `step` (logged after the checkpoint a run resumes from)."""
    lines = [line for line in files.read_text(metrics_path).splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        files.write_text_atomic(metrics_path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def start_over(workdir, log):
    """--restart: delete the checkpoints and set the old metrics.jsonl aside (metrics.<time>.jsonl)."""
    import shutil

    from etils import epath

    folder = epath.Path(files.absolute(workdir)) / "checkpoints"
    if folder.exists():
        shutil.rmtree(folder) if not files.is_remote(workdir) else folder.rmtree()
    metrics = os.path.join(workdir, "metrics.jsonl")
    if files.exists(metrics):
        aside = os.path.join(workdir, f"metrics.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        epath.Path(metrics).rename(aside)
        log(f"--restart: deleted the checkpoints; the old metrics are kept as {aside}")


def train(config, workdir, allow_config_change=False, log=print, restart=False):
    """Train (or resume) the run in `workdir`; returns the final TrainState (as checkpoints hold it).

    A work dir whose metrics.jsonl logged steps but which holds no checkpoint (they were deleted)
    is not silently trained from step 0 again: that takes restart=True (--restart), which also
    starts over a run whose checkpoints cannot be restored.

    SIGTERM (how TPU and Slurm pre-emption announce themselves) and SIGINT (Ctrl-C) save a
    checkpoint at the current step and return cleanly; re-running the command resumes from it.
    """
    config = config_lib.complete(config)
    parallel.initialize(config.parallel)
    lead = jax.process_index() == 0  # only one process writes the run's files
    check_workdir(config, workdir, allow_config_change or restart)
    data = TrainingData(config)  # bad data fails here, before anything is written
    resuming = not restart and has_checkpoint(workdir)
    resumed_with_changes = resuming and bool(config_lib.config_differences(config_lib.load_config(workdir), config))
    if resuming and files.exists(os.path.join(workdir, "subset.json")):
        if read_subset_record(workdir)["train_indices"] != [int(i) for i in data.train_indices]:
            raise TrainingError(f"{workdir}/subset.json records another training subset; use a new --workdir")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    # One writer per work dir, held until the run ends (workdir_lock: stale locks are taken over).
    lock = workdir_lock.acquire(workdir, log) if lead else None
    try:
        orphan_steps = [] if restart or resuming else logged_steps(metrics_path)
        if orphan_steps:
            raise TrainingError(
                f"work dir {workdir} logged training up to step {max(orphan_steps)} but holds no "
                "checkpoint (were they deleted?). Re-run with --restart to train it from step 0 (the old metrics.jsonl "
                "is set aside), or use a new --workdir.")
        if restart and lead:
            start_over(workdir, log)
            resumed_with_changes = False
        mesh = parallel.make_mesh(config.parallel)
        model = nets.build_network(config, config.data.channels)
        optimizer, schedule = make_optimizer(config.optim, config.train.batch_size)
        trainer = Trainer(config, model, optimizer, schedule, mesh)
        if lead:
            files.makedirs(os.path.join(workdir, "samples"))
            # A changed config (--allow_config_change) is recorded once a checkpoint exists under it, so a
            # failed attempt leaves the work dir with the settings that worked.
            if not resumed_with_changes:
                config_lib.save_config(workdir, config)
            record_subset(workdir, config.data, data.train_indices, data.num_source_images)
        data.place(trainer)

        fresh = init_state(config, model, optimizer)
        target = jax.device_put(fresh, parallel.replicated(mesh)) if jax.process_count() == 1 else trainer.place(fresh)
        manager = checkpoint.make_manager(workdir, config.train.keep_every)
        restored = checkpoint.restore_latest(manager, target, log=log)
        if restored is not None:
            log(f"resumed from step {int(restored.step)} in {workdir}")
            if lead and files.exists(metrics_path):  # rows a killed run logged after its last checkpoint
                dropped = drop_rows_after(metrics_path, int(restored.step))
                if dropped:
                    log(f"dropped {dropped} metrics.jsonl rows past step {int(restored.step)} (logged after that checkpoint)")
        saved_form = restored if restored is not None else target
        state = saved_form if config.parallel.mode == "jit" else trainer.place(saved_form)
        del fresh, target, restored, saved_form
        sample_fn = generate.make_sample_fn(config, model, mesh)
        track_every = int(config.train.track_every)
        tracker = tracking.Tracker(config, model, data.images, data.heldout, sample_fn, mesh) if track_every else None

        start = int(jax.device_get(trainer.to_saved(state).step))
        total = config.train.num_steps
        last_saved = manager.latest_step()
        window_sum, window_steps = None, 0
        t_window = time.perf_counter()
        t_start = t_window
        # XLA's CPU collectives can deadlock when several multi-device steps are in flight on few
        # cores (seen with 8 fake devices on 2 cores), so CPU meshes wait for each step.
        sync_each_step = mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"
        events = summaries.Summaries(workdir) if lead else None
        terminated = []
        previous_handler = _on_sigterm(lambda signum, _: terminated.append(signal.Signals(signum).name))
        try:
            step = start
            while step < total:
                # Several steps per dispatch where no log, sample or checkpoint falls inside them.
                count = trainer.steps_per_dispatch if trainer.multi_step and step + trainer.steps_per_dispatch <= next_event(step, config) else 1
                state, metrics = (trainer.multi_step if count > 1 else trainer.step)(state, data.for_step(step))
                metrics = trainer.metrics(metrics)
                if sync_each_step:
                    jax.block_until_ready(metrics)
                window_sum = metrics if window_sum is None else jax.tree_util.tree_map(jnp.add, window_sum, metrics)
                window_steps += count
                done = step = step + count
                if done % config.train.log_every == 0 or done == total:
                    means = {k: float(v) / window_steps for k, v in jax.device_get(window_sum).items()}
                    now = time.perf_counter()
                    rate = window_steps * config.train.batch_size / (now - t_window)
                    if not np.isfinite(means["loss"]):
                        manager.wait_until_finished()
                        kept = (f"The last good checkpoint (step {last_saved}) is kept" if last_saved is not None
                                else "No checkpoint was written yet, so a corrected re-run starts from step 0")
                        raise TrainingError(
                            f"the loss became {means['loss']} between steps {done - window_steps} and {done}. {kept}. "
                            "Lower optim.lr, set optim.grad_clip (e.g. 1.0) or use loss.weighting=edm, then re-run."
                        )
                    eta = (total - done) * config.train.batch_size / rate
                    if lead:
                        record = {"step": done, **means, "images_per_s": rate, "seconds": now - t_start}
                        files.append_line(metrics_path, json.dumps(record))
                        events.scalars(done, record, "train")
                    log(f"step {done}/{total}  loss {means['loss']:.4f} (clean {means['loss_clean']:.4f}, ambient "
                        f"{means['loss_ambient']:.4f})  {rate:.0f} img/s  ETA {eta:.0f}s")
                    window_sum, window_steps, t_window = None, 0, time.perf_counter()
                if done % config.train.sample_every == 0 or done == total:
                    grid = config.sample.grid_size**2
                    picture = generate.generate(config, model, trainer.to_saved(state).ema_params, grid,
                                                seed=config.sample.seed, batch_size=grid, sample_fn=sample_fn, mesh=mesh)
                    if lead:
                        plots.save_grid(picture, os.path.join(workdir, "samples", f"grid_{done:07d}.png"),
                                           config.sample.grid_size)
                        events.image(done, "samples", plots.tile(picture, config.sample.grid_size))
                if tracker and done % track_every == 0:
                    record = tracker(trainer.to_saved(state).ema_params, done)
                    if lead:
                        files.append_line(metrics_path, json.dumps({"step": done, **record, "seconds": time.perf_counter() - t_start}))
                        events.scalars(done, {k[len("track_"):]: v for k, v in record.items()}, "tracking")
                    log(f"step {done}/{total}  tracking: " + "  ".join(f"{k[6:]} {v:.4g}" for k, v in record.items()))
                if done % config.train.checkpoint_every == 0 or done == total or terminated:
                    if not all_finite(state.params):
                        manager.wait_until_finished()
                        raise TrainingError(
                            f"the parameters are not finite at step {done}; the last good checkpoint (step {last_saved}) "
                            "is kept. Lower optim.lr or set optim.grad_clip, then re-run to resume from it."
                        )
                    checkpoint.save(manager, done, trainer.to_saved(state))
                    last_saved = done
                    if resumed_with_changes and lead:
                        manager.wait_until_finished()
                        config_lib.save_config(workdir, config)
                        resumed_with_changes = False
                    if tracker and lead:
                        tracking.Tracker.save_plot(workdir)
                if terminated:
                    log(f"{terminated[0]}: saved a checkpoint at step {done}; re-run the same command to resume")
                    break
            manager.wait_until_finished()
        finally:
            _on_sigterm(previous_handler)
            if events:
                events.close()
        return trainer.to_saved(state)
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
