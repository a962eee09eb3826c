"""The train state and what moves it: parameters, Adam(W) with EDM's linear warm-up, the EMA.

    beta = 0.5 ** (batch / halflife_img),  halflife_img = min(halflife_kimg * 1000,
                                                             rampup_ratio * images seen).
Every key of a run is fold_in(key(train.seed), purpose, ...): nothing random is stored, so a
resumed run repeats an uninterrupted one bit for bit, on any number of devices.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from ambient_jax import config as config_lib
from ambient_jax import (
    nets,
)

# fold_in purposes of the root key (losses.KEY_NOISE_TN keys the noisy copies)
KEY_INIT, KEY_STEP = 0, 1


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
