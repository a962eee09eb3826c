"""One train step (EDM's training loop, Karras et al. 2022, with the objective of losses):

  indices b -> image i_b drawn uniformly from the training subset held on device,
  its noisy copy x_tn keyed by (loss.noise_seed, its source index) -> flips and EDM's
  augmentation, the same draw on the image and its copy (prepare_rows),
  per-row keys fold_in(step key, b) -> noise level, fresh noise, branch (objective.make_objective),
  loss = mean_b loss_b -> grads -> Adam with linear warm-up -> EMA of the parameters.

Every draw is fold_in(step key, purpose, row of the global batch): it depends on (seed, step,
row) only, never on how the rows are split over devices.
"""

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ambient_jax import config as config_lib
from ambient_jax.data import augment
from ambient_jax.diffusion import losses, objective, precond
from ambient_jax.training import finetune, train_state
from ambient_jax.types import Config

# fold_in purposes of a step's key (fold_in(fold_in(root, KEY_STEP), step)): the batch's image
# indices, the per-row keys of the objective (sigma and noise draws), dropout, horizontal flips
STEP_BATCH, STEP_ROWS, STEP_DROPOUT, STEP_FLIP, STEP_AUGMENT = 0, 1, 2, 3, 4


def step_root_key(config: Config) -> jax.Array:
    return jax.random.fold_in(train_state.root_key(config), train_state.KEY_STEP)


def batch_key(step_root: jax.Array, step: jax.Array | int) -> jax.Array:
    """The key of `step`'s choice of images."""
    return jax.random.fold_in(jax.random.fold_in(step_root, step), STEP_BATCH)


def batch_indices(
    step_root: jax.Array, step: jax.Array | int, batch_size: int, num_images: int
) -> jax.Array:
    """Which training images (positions in the subset) make up the global batch of `step`."""
    return jax.random.randint(batch_key(step_root, step), (batch_size,), 0, num_images)


def flip_rows(x0: jax.Array, flip: jax.Array) -> jax.Array:
    """Mirror the rows b with flip[b] left to right (NHWC: the W axis)."""
    return jnp.where(flip[:, None, None, None], x0[:, :, ::-1], x0)


def prepare_rows(
    config: Config,
    x0: jax.Array,
    index: jax.Array,
    rows: jax.Array,
    step_key: jax.Array,
    image_sigma_tn: jax.Array | None = None,
    image_clean: jax.Array | None = None,
    copy_noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None, dict[str, jax.Array]]:
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
        if copy_noise is None:  # a clean image's copy at its own level, a corrupted one as given
            copy_noise = jnp.where(jnp.asarray(image_clean), image_sigma_tn, 0.0)
        x_tn = losses.noisy_copy(x0, index, copy_noise, losses.noise_tn_key(config.loss))
    elif sigma_tn > 0:
        x_tn = losses.noisy_copy(x0, index, sigma_tn, losses.noise_tn_key(config.loss))
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
    pipe, p = augment.pipeline(config.data), config.data.augment_p
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


class HeldData(NamedTuple):
    """The training data held on device, one entry per image. For data of mixed quality also each
    image's sigma_tn, clean flag, the noise that makes its x_tn and its window of levels
    (objective.image_window: usable from 0 when clean, else from its branch boundary; usable to
    its sigma_max, the field None when no image has one), sorted by the window's bottom
    (training_data); else None."""

    images: Any  # [N, H, W, C]
    source_index: Any  # [N] int32: the image's index in its source (keys its noisy copy)
    sigma_tn: Any = None  # [N] float32
    clean: Any = None  # [N] bool
    copy_noise: Any = None  # [N] float32
    usable_from: Any = None  # [N] float32, ascending
    usable_to: Any = None  # [N] float32 (inf: no top), or None when no image has a top


class Rows(NamedTuple):
    """A batch's rows as the step takes them: images, source indices and, for data of mixed
    quality, each row's image's sigma_tn, clean flag, copy noise and window top (else None)."""

    x0: Any  # [B, H, W, C]
    index: Any  # [B] int32
    sigma_tn: Any = None
    clean: Any = None
    copy_noise: Any = None
    sigma_max: Any = None


def gather_batch(
    step_root: jax.Array,
    step: jax.Array | int,
    held: HeldData,
    batch_size: int,
    row_sigma: jax.Array | None = None,
    bounded_share: float = -1.0,
) -> Rows:
    """The global batch of `step` from the training data held on device: its rows.

    Data of mixed quality drawn level first (row_sigma [batch_size], each row's noise level): the
    held images are sorted by the level they are usable from (0 for clean ones), so the images
    usable at sigma are the first k(sigma) of them, and row b takes one of its k uniformly, by
    the batch key (the group's sampler: a level from the log-normal, then an image usable there).
    A level no image is usable at takes the first image (the loss redraws its level).
    With window tops (held.usable_to) the usable images are no longer a prefix: row b takes the
    k-th of the images whose window holds its level, k uniform by the same draw, from a [B, N]
    mask (with every top inf that is the prefix's k-th image: the same batch, bit for bit).
    bounded_share in (0, 1) (data.bounded_share): where images with a finite top and images
    without one are both usable, row b takes an image with a top when its draw u >= 1 - share,
    uniformly within the group it falls in (u rescaled to the group); -1: uniform over all.
    """
    if row_sigma is None:
        positions = batch_indices(step_root, step, batch_size, held.images.shape[0])
    else:
        u = jax.random.uniform(batch_key(step_root, step), (batch_size,))
        if held.usable_to is None:
            usable = jnp.searchsorted(held.usable_from, row_sigma, side="right")
        else:
            level = row_sigma[:, None]
            inside = (held.usable_from[None] <= level) & (level <= held.usable_to[None])
            if bounded_share != -1.0:  # rows where both kinds are usable keep to u's kind
                bounded = jnp.isfinite(held.usable_to)[None]
                both = jnp.any(inside & bounded, axis=1) & jnp.any(inside & ~bounded, axis=1)
                free_share = 1.0 - bounded_share
                to_bounded = u >= free_share
                inside = inside & jnp.where(both[:, None], to_bounded[:, None] == bounded, True)
                within = jnp.where(to_bounded, (u - free_share) / bounded_share, u / free_share)
                u = jnp.where(both, within, u)
            usable = jnp.sum(inside, axis=1, dtype=jnp.int32)
        usable = jnp.maximum(usable, 1)
        k = jnp.minimum(jnp.floor(u * usable).astype(jnp.int32), usable - 1)
        positions = (
            k  # the usable images are the first `usable`
            if held.usable_to is None
            else jnp.argmax(jnp.cumsum(inside, axis=1) > k[:, None], axis=1).astype(jnp.int32)
        )
    take = lambda a: None if a is None else a[positions]
    return Rows(
        x0=held.images[positions],
        index=held.source_index[positions],
        sigma_tn=take(held.sigma_tn),
        clean=take(held.clean),
        copy_noise=take(held.copy_noise),
        sigma_max=take(held.usable_to),
    )


def row_keys(step_root: jax.Array, step: jax.Array | int, rows: jax.Array) -> jax.Array:
    """The keys of `step`'s rows (positions in the global batch): every per-row draw of the loss
    comes from them."""
    k_rows = jax.random.fold_in(jax.random.fold_in(step_root, step), STEP_ROWS)
    return jax.vmap(lambda b: jax.random.fold_in(k_rows, b))(rows)


def row_sigmas(config: Config, step_root: jax.Array, step: jax.Array | int) -> jax.Array:
    """Each row's noise level of `step`, the draw the loss makes from the row's key
    (objective.row_levels): what a batch drawn level first is drawn for."""
    keys = row_keys(step_root, step, jnp.arange(config.train.batch_size))
    return objective.row_levels(keys, config.loss.p_mean, config.loss.p_std)


def make_row_loss(loss: Config, level_floor: float = 0.0) -> Callable[..., tuple[jax.Array, dict]]:
    """The run's per-row loss: objective.make_objective for config.loss, whole, with rows drawn
    only at levels >= level_floor when it is > 0 (finetune.train_above)."""
    return objective.make_objective(
        loss.objective,
        sigma_tn=loss.sigma_tn,
        branch_rule=loss.branch_rule,
        weighting=loss.weighting,
        p_mean=loss.p_mean,
        p_std=loss.p_std,
        sigma_data=loss.sigma_data,
        sigma_switch=loss.sigma_switch,
        rescale_cap=loss.rescale_cap,
        ambient_fraction=loss.ambient_fraction,
        switch_ratio=loss.switch_ratio,
        switch_offset=loss.switch_offset,
        level_floor=level_floor,
    )


def make_step_body(
    config: Config,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    axis_name: str | None = None,
    num_shards: int = 1,
) -> Callable[..., tuple[train_state.TrainState, dict[str, jax.Array]]]:
    """The one train-step body: (state, batch: Rows, shard) -> (state, metrics).

    `batch` holds the rows of the global batch this call trains on: all of them under jit (XLA
    shards them over the mesh), one device's `shard` of them under pmap (axis_name set:
    gradients and metrics are averaged with explicit pmean/psum). Every draw (flip, per-row
    keys) depends only on (seed, step, row of the global batch), never on how rows are split
    over devices.
    """
    batch_size = config.train.batch_size
    rows_per_shard = batch_size // num_shards
    row_loss = make_row_loss(config.loss, config.finetune.train_above)
    preconditioning = precond.from_config(config)
    step_root = step_root_key(config)
    ema_config = train_state.ema_settings(config)
    # finetune.train_above: the trained network below it (the split's `low` half) never moves
    frozen = bool(config.finetune.train_above)

    def body(state, batch, *, shard=0, batch_sharding=None):
        step_key = jax.random.fold_in(step_root, state.step)
        k_dropout = jax.random.fold_in(step_key, STEP_DROPOUT)
        rows = shard * rows_per_shard + jnp.arange(rows_per_shard)  # positions in the global batch
        keys = row_keys(step_root, state.step, rows)
        if num_shards > 1:
            k_dropout = jax.random.fold_in(k_dropout, shard)
        x0, x_tn, conditioning = prepare_rows(
            config, batch.x0, batch.index, rows, step_key, batch.sigma_tn, batch.clean,
            batch.copy_noise,
        )  # fmt: skip
        per_image = () if batch.sigma_tn is None else (batch.sigma_tn, batch.clean)
        if batch.sigma_max is not None:  # window tops (Omni's out-of-distribution images)
            per_image += (batch.sigma_max,)
        if batch_sharding is not None:
            x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)

        def loss_fn(params):
            raw = lambda x, c: model.apply(
                params, x, c, train=True, rngs={"dropout": k_dropout}, **conditioning
            )
            denoise = precond.denoiser(raw, preconditioning)
            per_row, aux = row_loss(denoise, x0, x_tn, keys, *per_image)
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
        moved = train_state.update_ema(
            state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state),
            batch_size,
            ema_config,
        )
        if frozen:
            moved = moved.replace(
                params=finetune.hold_frozen(moved.params, state.params),
                ema_params=finetune.hold_frozen(moved.ema_params, state.ema_params),
            )
        state = moved
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
