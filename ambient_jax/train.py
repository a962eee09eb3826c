"""Training: the train state, the compiled train step and the training loop.

One step (EDM's training loop, Karras et al. 2022, with the objective of ambient_jax.losses):
  indices b -> image i_b drawn uniformly from the training subset held on device,
  its noisy copy x_tn keyed by (loss.noise_seed, its source index) -> flips and EDM's
  augmentation, the same draw on the image and its copy (prepare_rows),
  per-row keys fold_in(step key, b) -> noise level, fresh noise, branch (losses.make_objective),
  loss = mean_b loss_b -> grads -> Adam with linear warm-up -> EMA of the parameters:
      beta = 0.5 ** (batch / halflife_img),  halflife_img = min(halflife_kimg * 1000,
                                                               rampup_ratio * images seen).
Every other key is fold_in(key(train.seed), purpose, step, row): nothing random is stored, so
a resumed run repeats an uninterrupted one bit for bit, on any number of devices.
"""

import functools
import json
import os
import shutil
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from ambient_jax import (
    augment,
    checkpoint,
    files,
    generate,
    losses,
    nets,
    parallel,
    plots,
    summaries,
    tracking,
    workdir_lock,
)
from ambient_jax import config as config_lib
from ambient_jax.data import DataError, check_subset_record, corrupt, load_split, record_subset
from ambient_jax.data.subset import choose_subset
from ambient_jax.data.tfds_source import StreamingBatches, open_source
from ambient_jax.precond import edm_denoiser

# fold_in purposes of the root key
KEY_INIT, KEY_STEP, KEY_NOISE_TN = 0, 1, 2
# fold_in purposes of a step's key (fold_in(fold_in(root, KEY_STEP), step)): the batch's image
# indices, the per-row keys of the objective (sigma and noise draws), dropout, horizontal flips
STEP_BATCH, STEP_ROWS, STEP_DROPOUT, STEP_FLIP, STEP_AUGMENT = 0, 1, 2, 3, 4


class TrainingError(RuntimeError):
    """Training cannot go on (a diverged loss, a work dir of another run); the message says what to
    do."""


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
    clip = (
        optax.clip_by_global_norm(optim_config.grad_clip)
        if optim_config.grad_clip
        else optax.identity()
    )
    adam = optax.adamw(
        schedule,
        b1=optim_config.b1,
        b2=optim_config.b2,
        eps=optim_config.eps,
        weight_decay=optim_config.weight_decay,
    )
    return optax.chain(clip, adam), schedule


def ema_beta(step, batch_size, ema_config):
    """EDM's EMA decay for the update made at `step` (0-based)."""
    halflife = ema_config.halflife_kimg * 1000.0
    if ema_config.rampup_ratio:
        halflife = jnp.minimum(halflife, (step + 1) * batch_size * ema_config.rampup_ratio)
    return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def update_ema(state, batch_size, ema_config):
    """The state with its EMA moved towards its parameters, for the update made at state.step:
    ema <- beta * ema + (1 - beta) * params, leaf by leaf."""
    beta = ema_beta(state.step, batch_size, ema_config)
    ema = jax.tree_util.tree_map(
        lambda e, p: beta * e + (1 - beta) * p, state.ema_params, state.params
    )
    return state.replace(ema_params=ema)


def init_state(config, model, optimizer):
    key = jax.random.fold_in(root_key(config), KEY_INIT)
    params = jax.jit(functools.partial(nets.init_params, model, config_lib.image_shape(config)))(
        key
    )
    ema_params = jax.tree_util.tree_map(jnp.copy, params)  # its own buffers: the step donates both
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=ema_params,
        opt_state=optimizer.init(params),
    )


def step_root_key(config):
    return jax.random.fold_in(root_key(config), KEY_STEP)


def batch_key(step_root, step):
    """The key of `step`'s choice of images."""
    return jax.random.fold_in(jax.random.fold_in(step_root, step), STEP_BATCH)


def batch_indices(step_root, step, batch_size, num_images):
    """Which training images (positions in the subset) make up the global batch of `step`."""
    return jax.random.randint(batch_key(step_root, step), (batch_size,), 0, num_images)


def noise_tn_key(config):
    """The key of the fixed noise of S_tn (losses.fixed_noise): loss.noise_seed alone, so an
    image's noisy copy is the same in every run, train seed and subset (with the image's source
    index, as the paper's code seeds it by the raw image index)."""
    return jax.random.fold_in(jax.random.key(config.loss.noise_seed), KEY_NOISE_TN)


def noisy_training_copies(config, images, source_indices):
    """S_tn as the run trains on it: x_tn for every training image, keyed by its source index."""
    images = jnp.asarray(images, jnp.float32)
    index = jnp.asarray(source_indices, jnp.int32)
    return losses.noisy_copy(
        images, index, config_lib.effective_sigma_tn(config), noise_tn_key(config)
    )


def flip_rows(x0, flip):
    """Mirror the rows b with flip[b] left to right (NHWC: the W axis)."""
    return jnp.where(flip[:, None, None, None], x0[:, :, ::-1], x0)


def prepare_rows(
    config, x0, index, rows, step_key, image_sigma_tn=None, image_clean=None, copy_noise=None
):
    """The rows as the loss sees them: (x0, x_tn or None, the network's conditioning).

    Each image's noisy copy is made from the image as stored (keyed by its source index), then
    flips (data.augment_flip) and EDM's augmentation (data.augment_p) act on the image and its
    copy with the same draws: the copy is the image's one noisy observation, augmented as it
    is, and never a fresh noise on an augmented image. The draws come from fold_in(step key,
    purpose, row of the global batch); the augment labels go to the network.
    With per-image sigma_tn (data of mixed quality) x_tn = image + copy_noise eps_i: a clean
    image's copy at its own level, a corrupted image plus the noise it lacks
    (data.corrupt.annotation_values; without copy_noise, a corrupted image is its own x_tn)."""
    sigma_tn = config_lib.effective_sigma_tn(config)
    if image_sigma_tn is not None:
        level = jnp.where(image_clean, image_sigma_tn, 0.0) if copy_noise is None else copy_noise
        noise = losses.fixed_noise(noise_tn_key(config), index, x0.shape[1:], x0.dtype)
        x_tn = x0 + level.astype(x0.dtype)[:, None, None, None] * noise
    elif sigma_tn > 0:
        x_tn = losses.noisy_copy(x0, index, sigma_tn, noise_tn_key(config))
    else:
        x_tn = None
    both = lambda f: (f(x0), None if x_tn is None else f(x_tn))
    if config.data.augment_flip:
        coin = jax.random.bernoulli(
            jax.random.fold_in(step_key, STEP_FLIP), 0.5, (config.train.batch_size,)
        )
        x0, x_tn = both(lambda x: flip_rows(x, coin[rows]))
    if not config.data.augment_p:
        return x0, x_tn, {}
    k_augment = jax.random.fold_in(step_key, STEP_AUGMENT)
    keys = jax.vmap(lambda b: jax.random.fold_in(k_augment, b))(rows)
    pipe, p = nets.augment_pipe(config), config.data.augment_p
    if x_tn is None:
        x0, labels = augment.augment_batch(x0, keys, p, pipe)
        return x0, None, {"augment_labels": labels}
    # One pipeline over the images and their copies. (Two copies of the pipeline with the same
    # draws in one program were miscompiled by XLA's CPU backend, jax 0.10: the resampling of
    # one of them read wrong pixels; tests/test_augment.py checks the step's rows.)
    out, labels = augment.augment_batch(
        jnp.concatenate([x0, x_tn]), jnp.concatenate([keys, keys]), p, pipe
    )
    n = x0.shape[0]
    return out[:n], out[n:], {"augment_labels": labels[:n]}


def gather_batch(step_root, step, held, batch_size, row_sigma=None):
    """The global batch of `step` from the training data held on device: each array of `held`
    (the images, their source indices and, for data of mixed quality, each image's sigma_tn,
    clean flag, the noise that makes its x_tn, and the level it is usable from, which is not
    returned) at the batch's positions.

    Data of mixed quality drawn level first (row_sigma [batch_size], each row's noise level): the
    held images are sorted by the level they are usable from (0 for clean ones), so the images
    usable at sigma are the first k(sigma) of them, and row b takes one of its k uniformly, by
    the batch key (the group's sampler: a level from the log-normal, then an image usable there).
    A level below every image's boundary takes the first image (the loss redraws its level).
    """
    if row_sigma is None:
        positions = batch_indices(step_root, step, batch_size, held[0].shape[0])
    else:
        usable = jnp.maximum(jnp.searchsorted(held[5], row_sigma, side="right"), 1)
        u = jax.random.uniform(batch_key(step_root, step), (batch_size,))
        positions = jnp.minimum(jnp.floor(u * usable).astype(jnp.int32), usable - 1)
    return tuple(a[positions] for a in held[:5])


def mixed_quality(config):
    """Whether the run trains on corrupted images beside its clean ones."""
    return bool(config.data.corrupt_count) and config.data.corrupt_sigma_tn != "unused"


def row_keys(step_root, step, rows):
    """The keys of `step`'s rows (positions in the global batch): every per-row draw of the loss
    comes from them."""
    k_rows = jax.random.fold_in(jax.random.fold_in(step_root, step), STEP_ROWS)
    return jax.vmap(lambda b: jax.random.fold_in(k_rows, b))(rows)


def row_sigmas(config, step_root, step):
    """Each row's noise level of `step`, the same draw the loss makes from the row's key
    (losses.row_level_normal): what a batch drawn level first is drawn for."""
    keys = row_keys(step_root, step, jnp.arange(config.train.batch_size))
    return jnp.exp(config.loss.p_mean + config.loss.p_std * losses.row_level_normal(keys))


def make_row_loss(config):
    """The run's per-row loss: losses.make_objective for the config's loss fields."""
    return losses.make_objective(
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
        switch_ratio=config.loss.switch_ratio,
        switch_offset=config.loss.switch_offset,
    )


def make_step_body(config, model, optimizer, schedule, axis_name=None, num_shards=1):
    """The one train-step body: (state, x0, index, shard) -> (state, metrics).

    x0 [b,H,W,C] and index [b] are the rows of the global batch this call trains on: all of
    them under jit (XLA shards them over the mesh), one device's `shard` of them under pmap
    (axis_name set: gradients and metrics are averaged with explicit pmean/psum). Every draw
    (flip, per-row keys) depends only on (seed, step, row of the global batch), never on how
    rows are split over devices.
    """
    batch_size = config.train.batch_size
    rows_per_shard = batch_size // num_shards
    row_loss = make_row_loss(config)
    step_root = step_root_key(config)

    def body(state, x0, index, image_sigma_tn=None, image_clean=None, copy_noise=None, *,
             shard=0, batch_sharding=None):  # fmt: skip
        step_key = jax.random.fold_in(step_root, state.step)
        k_dropout = jax.random.fold_in(step_key, STEP_DROPOUT)
        rows = shard * rows_per_shard + jnp.arange(rows_per_shard)  # positions in the global batch
        keys = row_keys(step_root, state.step, rows)
        if num_shards > 1:
            k_dropout = jax.random.fold_in(k_dropout, shard)
        x0, x_tn, conditioning = prepare_rows(
            config, x0, index, rows, step_key, image_sigma_tn, image_clean, copy_noise
        )
        per_image = () if image_sigma_tn is None else (image_sigma_tn, image_clean)
        if batch_sharding is not None:
            x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)

        def loss_fn(params):
            raw = lambda x, c: model.apply(
                params, x, c, train=True, rngs={"dropout": k_dropout}, **conditioning
            )
            denoise = edm_denoiser(raw, config.loss.sigma_data)
            per_row, aux = row_loss(denoise, x0, index, keys, x_tn, *per_image)
            return jnp.mean(per_row), (per_row, aux)

        (loss, (per_row, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        amb = aux["is_ambient"].astype(jnp.float32)
        sums = {
            "ambient": jnp.sum(per_row * amb),
            "clean": jnp.sum(per_row * (1 - amb)),
            "n_ambient": jnp.sum(amb),
        }
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
            sums = jax.lax.psum(sums, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        state = update_ema(
            state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state),
            batch_size,
            config.ema,
        )
        metrics = {
            "loss": loss,
            "loss_clean": sums["clean"] / jnp.maximum(batch_size - sums["n_ambient"], 1.0),
            "loss_ambient": sums["ambient"] / jnp.maximum(sums["n_ambient"], 1.0),
            "frac_ambient": sums["n_ambient"] / batch_size,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
        }
        return state.replace(step=state.step + 1), metrics

    return body


class Trainer:
    """The compiled step for parallel.mode. Both modes take and return the state replicated over
    the mesh (as checkpoints hold it) and the metrics of the global batch.

    `step(state, images)` trains on the training images held on device; a streamed run
    (data.streaming) calls `step(state, x0, index)` with the global batch. `multi_step` fuses
    train.steps_per_dispatch steps (images on device only).
    """

    def __init__(self, config, model, optimizer, schedule, mesh):
        parallel.check_batch(config.train.batch_size, mesh)
        self.mesh = mesh
        if config.data.streaming and config.parallel.mode != "jit":
            raise ValueError("data.streaming needs parallel.mode=jit")
        self.steps_per_dispatch = int(config.train.steps_per_dispatch)
        if config.data.streaming and self.steps_per_dispatch > 1:
            raise ValueError(
                "train.steps_per_dispatch > 1 needs the training images on device "
                "(data.streaming=False)"
            )
        batch_size, step_root = config.train.batch_size, step_root_key(config)
        level_first = mixed_quality(config) and config.data.corrupt_sampling == "level_first"

        def gather(state, held):
            sigma = row_sigmas(config, step_root, state.step) if level_first else None
            return gather_batch(step_root, state.step, held, batch_size, sigma)

        self.multi_step = None
        if config.parallel.mode == "jit":
            repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
            body = functools.partial(
                make_step_body(config, model, optimizer, schedule), batch_sharding=sharded
            )
            # held = (training images, their source indices[, sigma_tn, clean, copy noise,
            # usable-from level]), replicated
            on_device = lambda state, held: body(state, *gather(state, held))
            compile_ = functools.partial(jax.jit, out_shardings=(repl, repl), donate_argnums=0)
            if config.data.streaming:
                self.step = compile_(body, in_shardings=(repl, sharded, sharded))
            else:
                self.step = compile_(on_device, in_shardings=(repl, repl))
                if self.steps_per_dispatch > 1:
                    self.multi_step = compile_(
                        scan_steps(on_device, self.steps_per_dispatch), in_shardings=(repl, repl)
                    )
        elif config.parallel.mode == "pmap":
            body = make_step_body(
                config,
                model,
                optimizer,
                schedule,
                axis_name=parallel.DATA_AXIS,
                num_shards=mesh.size,
            )
            rows_per_device = batch_size // mesh.size

            def per_device(state, held):
                shard = jax.lax.axis_index(parallel.DATA_AXIS)
                batch = gather(state, held)
                mine = lambda a: jax.lax.dynamic_slice_in_dim(
                    a, shard * rows_per_device, rows_per_device
                )
                return body(state, *map(mine, batch), shard=shard)

            self.step = PmapStep(per_device, mesh)
            if self.steps_per_dispatch > 1:
                self.multi_step = PmapStep(scan_steps(per_device, self.steps_per_dispatch), mesh)
        else:
            raise ValueError(f"parallel.mode must be 'jit' or 'pmap', got {config.parallel.mode!r}")

    def place(self, tree):
        """Host arrays (a state, the training images) -> replicated over the mesh, as the step takes
        them."""
        return parallel.place_replicated(tree, self.mesh)


class PmapStep:
    """parallel.mode=pmap: a per-device step under jax.pmap, called like the jit step.

    pmap holds one copy of each argument per device along a leading axis. This adapter turns the
    replicated state (and images) into that form on entry and back on exit, on the devices (each
    device's copy gains or loses the axis in one dispatch), so the loop and checkpoints see one
    state form in both modes.
    """

    def __init__(self, per_device, mesh):
        if jax.process_count() > 1:
            raise ValueError(
                "parallel.mode=pmap runs on one host here; use parallel.mode=jit across hosts"
            )
        self.mesh, self.devices = mesh, list(mesh.devices.flat)
        self.run = jax.pmap(
            per_device, axis_name=parallel.DATA_AXIS, devices=self.devices, donate_argnums=0
        )
        self.add_axis = jax.jit(lambda leaves: [a[None] for a in leaves])
        self.drop_axis = jax.jit(lambda leaves: [a[0] for a in leaves])
        self.held = (None, None)  # the last training data given and its per-device form

    def __call__(self, state, held):
        if self.held[0] is not held:
            self.held = (held, self.per_device_copies(held))
        state, metrics = self.run(self.per_device_copies(state), self.held[1])
        return self.replicated(state), jax.tree_util.tree_map(lambda m: m[0], metrics)

    def _regroup(self, tree, convert, shape, sharding):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        by_device = [{s.device: s.data for s in a.addressable_shards} for a in leaves]
        converted = [convert([shards[d] for shards in by_device]) for d in self.devices]
        out = [
            jax.make_array_from_single_device_arrays(shape(a), sharding, [c[i] for c in converted])
            for i, a in enumerate(leaves)
        ]
        return jax.tree_util.tree_unflatten(treedef, out)

    def per_device_copies(self, tree):
        return self._regroup(
            tree,
            self.add_axis,
            lambda a: (len(self.devices), *a.shape),
            parallel.batch_sharded(self.mesh),
        )

    def replicated(self, tree):
        return self._regroup(
            tree, self.drop_axis, lambda a: a.shape[1:], parallel.replicated(self.mesh)
        )


def scan_steps(step, count):
    """`count` steps in one dispatch (lax.scan): metrics come back summed over the steps. Each
    step's draws depend on state.step only, so this trains the same model as `count` calls."""

    def steps(state, images):
        state, metrics = jax.lax.scan(lambda st, _: step(st, images), state, None, length=count)
        return state, jax.tree_util.tree_map(lambda m: jnp.sum(m, axis=0), metrics)

    return steps


def next_event(step, config):
    """The first step after `step` at which the loop logs, samples, tracks, saves or stops."""
    t = config.train
    intervals = [e for e in (t.log_every, t.sample_every, t.checkpoint_every, t.track_every) if e]
    return min([(step // every + 1) * every for every in intervals] + [t.num_steps])


def all_finite(tree):
    return bool(
        jax.device_get(
            jax.tree_util.tree_reduce(
                lambda a, b: a & b, jax.tree_util.tree_map(lambda x: jnp.all(jnp.isfinite(x)), tree)
            )
        )
    )


def has_checkpoint(workdir):
    if not files.exists(os.path.join(workdir, "checkpoints")):
        return False
    return checkpoint.make_manager(workdir, create=False).latest_step() is not None


def check_workdir(config, workdir, allow_config_change=False, restart=False):
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


class TrainingData:
    """The training subset, held on device (default) or streamed batch by batch (data.streaming)."""

    def __init__(self, config):
        self.config = config
        self.heldout = None
        # data of mixed quality: (source indices, sigma_tn, clean flags, noise added to make x_tn)
        self.corrupted = None
        if not config.data.streaming:
            split = load_split(config.data)
            self.images, self.train_indices, self.heldout = (
                split.train,
                split.train_indices,
                split.heldout,
            )
            self.held = (self.images, self.train_indices.astype(np.int32))
            if mixed_quality(config):
                self.corrupted = self.hold_mixed_quality(config, split)
            want = config_lib.image_shape(config)
            if tuple(self.images.shape[1:]) != want:
                raise DataError(
                    f"the {config.data.source} source gives images of shape "
                    f"{tuple(self.images.shape[1:])} but the config "
                    f"asks for {want} (data.resolution, data.resolution, data.channels): set "
                    "data.channels="
                    f"{self.images.shape[-1]} or use a source with {want[-1]}-channel images"
                )
            self.num_source_images = (
                len(split.train) + len(split.heldout) + len(split.corrupted_indices)
            )
            if config.train.track_every and len(self.heldout) < 2:
                raise DataError(
                    f"config field train.track_every: tracking compares the model on training "
                    f"and held-out images, but data.n_train = {len(self.images)} leaves "
                    f"{len(self.heldout)} of the {config.data.source} source's "
                    f"{self.num_source_images} images held out: lower data.n_train or set "
                    "train.track_every=0"
                )
            return
        if config.data.source != "tfds":
            raise ValueError(
                "data.streaming reads a tfds source: set data.source=tfds (mnist and folders fit "
                "on device)"
            )

        self.num_source_images = len(open_source(config.data))
        self.train_indices = choose_subset(
            self.num_source_images, config.data.n_train, config.data.subset_seed
        )
        self.images = None

    def hold_mixed_quality(self, config, split):
        """Data of mixed quality: the clean images (at the run's sigma_tn, 0 for ddpm) and the
        corrupted ones (at their annotated sigma_tn) held together, each with its sigma_tn, clean
        flag, the noise that makes its x_tn and the level it is usable from (0 when clean, else
        its branch boundary), sorted by that level (what a batch drawn level first needs); returns
        what corrupted.json records."""
        sigma_tn, clean, copy_noise = corrupt.annotation_values(
            config.data, split.corrupted_indices
        )
        n, run_sigma_tn = len(self.images), config_lib.effective_sigma_tn(config)
        all_sigma_tn = np.concatenate([np.full(n, run_sigma_tn), sigma_tn])
        all_clean = np.concatenate([np.ones(n, bool), clean])
        boundary = all_sigma_tn * config.loss.switch_ratio + config.loss.switch_offset
        usable_from = np.where(all_clean, 0.0, boundary).astype(np.float32)
        order = np.argsort(usable_from, kind="stable")
        self.held = tuple(
            a[order]
            for a in (
                np.concatenate([self.images, split.corrupted]),
                np.concatenate([self.train_indices, split.corrupted_indices]).astype(np.int32),
                all_sigma_tn.astype(np.float32),
                all_clean,
                np.concatenate([np.full(n, run_sigma_tn), copy_noise]).astype(np.float32),
                usable_from,
            )
        )
        return split.corrupted_indices, sigma_tn, clean, copy_noise

    def record(self, workdir, config):
        """subset.json (the clean training images) and, with corrupted ones, corrupted.json."""
        record_subset(workdir, config.data, self.train_indices, self.num_source_images)
        if self.corrupted is not None:
            corrupt.record_corrupted(workdir, config.data, *self.corrupted)

    def place(self, trainer):
        """Put the images on the step's devices, or open the stream of batches."""
        if self.images is not None:
            self.on_device = trainer.place(self.held)
            return

        root, batch, n = (
            step_root_key(self.config),
            self.config.train.batch_size,
            len(self.train_indices),
        )
        host_indices = jax.jit(lambda step: batch_indices(root, step, batch, n))
        self.mesh = trainer.mesh
        self.stream = StreamingBatches(
            self.config.data,
            self.train_indices,
            lambda s: np.asarray(host_indices(s)),
            batch,
            jax.process_index(),
            jax.process_count(),
        )

    def for_step(self, step):
        """The step's arguments after the state: the training data held on device, or the
        streamed global batch (x0, source indices)."""
        if self.images is not None:
            return (self.on_device,)
        x0, index = self.stream.rows_for(step)
        return parallel.global_batch(x0, self.mesh), parallel.global_batch(
            index.astype(np.int32), self.mesh
        )


def start_over(workdir, log):
    """--restart: delete the checkpoints and set the old metrics.jsonl aside
    (metrics.<time>.jsonl)."""
    folder = epath.Path(files.absolute(workdir)) / "checkpoints"
    if folder.exists():
        shutil.rmtree(folder) if not files.is_remote(workdir) else folder.rmtree()
    metrics = os.path.join(workdir, "metrics.jsonl")
    if files.exists(metrics):
        aside = os.path.join(workdir, f"metrics.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        epath.Path(metrics).rename(aside)
        log(f"--restart: deleted the checkpoints; the old metrics are kept as {aside}")


def due(step, every, total):
    """Whether a periodic action (every `every` steps, and at the last step) falls at `step`."""
    return (every and step % every == 0) or step == total


class LogWindow:
    """The metrics summed since the last log line, and the time they took."""

    def __init__(self):
        self.start()

    def start(self):
        self.sums, self.steps, self.started = None, 0, time.perf_counter()

    def add(self, metrics, steps):
        self.sums = (
            metrics if self.sums is None else jax.tree_util.tree_map(jnp.add, self.sums, metrics)
        )
        self.steps += steps

    def close(self, batch_size):
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
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")
        self.events = summaries.Summaries(workdir) if lead else None
        self.sample_fn = generate.make_sample_fn(config, model, mesh)
        self.last_saved = manager.latest_step()
        self.t_start = time.perf_counter()

    def write_log(self, step, window):
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
            raise TrainingError(
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

    def save_samples(self, step, ema_params):
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

    def track(self, step, tracker, ema_params):
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

    def save_checkpoint(self, step, state):
        if not all_finite(state.params):
            self.manager.wait_until_finished()
            raise TrainingError(
                f"the parameters are not finite at step {step}; the last good checkpoint (step "
                f"{self.last_saved}) "
                "is kept. Lower optim.lr or set optim.grad_clip, then re-run to resume from it."
            )
        checkpoint.save(self.manager, step, state)
        self.last_saved = step

    def close(self):
        self.manager.wait_until_finished()
        if self.events:
            self.events.close()


# where the trainer moves checkpoint steps it cannot restore (never deleted)
UNREADABLE_CHECKPOINTS = "unreadable_checkpoints"


def restore_or_init(config, workdir, model, optimizer, mesh, manager, lead, log):
    """The latest checkpoint's state (metrics.jsonl rows logged after it are dropped), or a fresh
    one."""
    fresh = parallel.place_replicated(init_state(config, model, optimizer), mesh)
    restored = checkpoint.restore_latest(
        manager, fresh, log=log, set_aside=os.path.join(workdir, UNREADABLE_CHECKPOINTS)
    )
    if restored is None:
        return fresh
    step = int(restored.step)
    log(f"resumed from step {step} in {workdir}")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if lead and files.exists(metrics_path):  # rows a killed run logged after its last checkpoint
        dropped = summaries.drop_rows_after(metrics_path, step)
        if dropped:
            log(
                f"dropped {dropped} metrics.jsonl rows past step {step} (logged after that "
                "checkpoint)"
            )
    return restored


def check_no_orphan_metrics(workdir):
    """A work dir that logged steps but holds no checkpoint (they were deleted) is not silently
    trained from step 0 again."""
    orphan_steps = summaries.logged_steps(os.path.join(workdir, "metrics.jsonl"))
    if orphan_steps:
        raise TrainingError(
            f"work dir {workdir} logged training up to step {max(orphan_steps)} but holds no "
            "checkpoint (were they deleted?). Re-run with --restart to train it from step 0 (the "
            "old metrics.jsonl "
            "is set aside), or use a new --workdir."
        )


def warn_if_few_heldout(config, training, log):
    """The evaluation compares the sample.num_samples samples with as many held-out images (FD,
    FID, the held-out reference rows): say up front when fewer remain."""
    if training.heldout is None or len(training.heldout) >= config.sample.num_samples:
        return
    log(
        f"warning: data.n_train = {len(training.images)} leaves {len(training.heldout)} of the "
        f"source's {training.num_source_images} images held out, fewer than the "
        f"{config.sample.num_samples} samples the evaluation compares with as many held-out "
        f"images: its FD and FID will use {len(training.heldout)}"
        + ("" if len(training.heldout) >= 2 else ", and it cannot run without two")
    )


def train(config, workdir, allow_config_change=False, log=print, restart=False):
    """Train (or resume) the run in `workdir`; returns the final TrainState (as checkpoints hold
    it).

    A work dir whose metrics.jsonl logged steps but which holds no checkpoint (they were deleted)
    is not silently trained from step 0 again: that takes restart=True (--restart), which also
    starts over a run whose checkpoints cannot be restored.

    SIGTERM (how TPU and Slurm pre-emption announce themselves) and SIGINT (Ctrl-C) save a
    checkpoint at the current step and return cleanly; re-running the command resumes from it.
    """
    config = config_lib.complete(config)
    parallel.initialize(config.parallel)
    lead = jax.process_index() == 0  # only one process writes the run's files
    check_workdir(config, workdir, allow_config_change or restart, restart)
    training = TrainingData(config)  # bad data fails here, before anything is written
    warn_if_few_heldout(config, training, log if lead else lambda _: None)
    if training.corrupted is not None and lead:
        _, sigma_tn, clean, _ = training.corrupted
        log(
            f"data of mixed quality: {len(training.images)} clean and {len(sigma_tn)} corrupted "
            f"images ({config.data.corrupt_kind} {config.data.corrupt_level:g}), the corrupted "
            + (
                "used as if clean"
                if clean.all()
                else f"at sigma_tn {np.median(sigma_tn):.3g} (median; "
                f"{config.data.corrupt_sigma_tn}), batches drawn {config.data.corrupt_sampling}"
            )
        )
    resuming = not restart and has_checkpoint(workdir)
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
            check_no_orphan_metrics(workdir)
        if restart and lead:
            start_over(workdir, log)
        mesh = parallel.make_mesh(config.parallel)
        model = nets.build_network(config, config.data.channels)
        optimizer, schedule = make_optimizer(config.optim, config.train.batch_size)
        trainer = Trainer(config, model, optimizer, schedule, mesh)
        if lead:
            files.makedirs(os.path.join(workdir, "samples"))
            if not config_to_record:
                config_lib.save_config(workdir, config)
            training.record(workdir, config)
        training.place(trainer)
        manager = checkpoint.make_manager(workdir, config.train.keep_every)
        state = restore_or_init(config, workdir, model, optimizer, mesh, manager, lead, log)
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
                    state, *training.for_step(step)
                )
                if sync_each_step:
                    jax.block_until_ready(metrics)
                window.add(metrics, count)
                step += count
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
