"""The train state and what moves it: parameters, Adam(W) with EDM's linear warm-up, the EMA.

    beta = 0.5 ** (batch / halflife_img),  halflife_img = min(halflife_kimg * 1000,
                                                             rampup_ratio * images seen).
Every key of a run is fold_in(key(train.seed), purpose, ...): nothing random is stored, so a
resumed run repeats an uninterrupted one bit for bit, on any number of devices.
"""

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ambient_jax import config as config_lib
from ambient_jax import nets
from ambient_jax.data import augment
from ambient_jax.diffusion import losses, precond
from ambient_jax.types import Config

# fold_in purposes of the root key (losses.KEY_NOISE_TN keys the noisy copies)
KEY_INIT, KEY_STEP = 0, 1


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def network(config: Config, channels: int) -> nn.Module:
    """The run's network (nets.build_network): config.model, with as many augment labels as
    data.augment_pipe gives (augment.label_width) and split at model.split_sigma, where -1 means
    the ambient branch's start (losses.branch_start), for the ddpm objective too, so that both
    objectives train the same network. A run that trains only above finetune.train_above is split
    there instead (its `low` half the trained network, frozen)."""
    split = float(config.model.split_sigma)
    if config.finetune.train_above:  # the trained network kept below that level (finetune)
        split = float(config.finetune.train_above)
    return nets.build_network(
        config.model,
        precond.output_channels(precond.from_config(config), channels),
        augment_dim=augment.label_width(config.data),
        split_boundary=losses.branch_start(config.loss) if split < 0 else split,
        train_low=not config.finetune.train_above,
    )


def param_shapes(config: Config, model: nn.Module) -> Any:
    """The shapes of `model`'s variables as the trainer initialises them for `config` (no
    computation, no memory): the target of a restore."""
    return jax.eval_shape(
        functools.partial(nets.init_params, model, config_lib.image_shape(config)),
        jax.random.key(0),
    )


def root_key(config: Config) -> jax.Array:
    return jax.random.key(config.train.seed)


def learning_rate_schedule(optim_config: Config, batch_size: int) -> optax.Schedule:
    """lr * min(images seen / warm-up images, 1), counted after the step (EDM's ramp-up)."""
    warmup_img = optim_config.warmup_kimg * 1000.0

    def schedule(step):
        seen = (step + 1) * batch_size
        ramp = jnp.minimum(seen / warmup_img, 1.0) if warmup_img > 0 else 1.0
        return optim_config.lr * ramp

    return schedule


def make_optimizer(
    optim_config: Config, batch_size: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
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


def ema_beta(step: jax.Array | int, batch_size: int, ema_config: Config) -> jax.Array:
    """EDM's EMA decay for the update made at `step` (0-based)."""
    halflife = ema_config.halflife_kimg * 1000.0
    if ema_config.rampup_ratio:
        halflife = jnp.minimum(halflife, (step + 1) * batch_size * ema_config.rampup_ratio)
    return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def ema_settings(config: Config) -> Config:
    """config.ema as the run applies it: finetune.keep_ema turns the ramp-up off, so the EMA keeps
    the trained average at its full half-life from the first step (EDM's --transfer)."""
    if config.finetune.keep_ema:
        return ml_collections.ConfigDict(dict(config.ema.to_dict(), rampup_ratio=0.0))
    return config.ema


def update_ema(state: TrainState, batch_size: int, ema_config: Config) -> TrainState:
    """The state with its EMA moved towards its parameters, for the update made at state.step:
    ema <- beta * ema + (1 - beta) * params, leaf by leaf."""
    beta = ema_beta(state.step, batch_size, ema_config)
    ema = jax.tree_util.tree_map(
        lambda e, p: beta * e + (1 - beta) * p, state.ema_params, state.params
    )
    return dataclasses.replace(state, ema_params=ema)


def init_state(
    config: Config, model: nn.Module, optimizer: optax.GradientTransformation
) -> TrainState:
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
