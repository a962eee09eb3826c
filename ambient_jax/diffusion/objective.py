"""The training objective over a batch: which rows are clean and which ambient, at which noise
level, and the loss of each (losses holds the per-row formulas and the noisy copies).

Rebalancing the branches (ambient_fraction = f > 0, paper rule): each row is ambient with
probability f and draws its sigma from the same log-normal truncated to its branch (sigma >= S for
ambient rows, sigma < S for clean ones, by the inverse normal CDF). With f = P(sigma >= S) under
the log-normal this is the paper's draw exactly; a larger f gives the ambient region, whose
targets are the noisiest, more rows per step without changing which noise levels each branch sees.

The two-regime objective (the method) is offered with two branch rules:
  * "paper" (the paper's code): ln sigma ~ N(P_mean, P_std^2) over the whole range; the draw
    picks the branch, sigma < sigma_tn -> denoising on x0, else ambient on x_tn.
  * "lecture" (Algorithm 1 of the lecture, literally, VP form): each batch element is drawn
    from S u S_tn; a clean element gets t ~ U(t_min, t_n) and the plain VP denoising loss,
    a noisy one t ~ U(t_n, T) and eq. (5) in VP form, unweighted.
With sigma_tn = 0 both reduce exactly to the plain denoising objective of their rule.


Every random draw of row b comes from its own key (example_keys[b]), so a row's loss does not
depend on how the batch is split over devices. The rows' noisy copies x_tn come from the caller
(losses.noisy_training_copies / losses.noisy_copy: the trainer augments each copy with its image).
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.scipy.special import ndtr, ndtri

from ambient_jax.diffusion import losses, schedules
from ambient_jax.diffusion.losses import ambient_loss_vp, two_regime_ve
from ambient_jax.diffusion.precond import SIGMA_DATA, vp_denoiser
from ambient_jax.diffusion.schedules import expand_rows


def make_objective(
    objective: str = "ambient",
    sigma_tn: float = 0.5,
    branch_rule: str = "paper",
    weighting: str = "edm",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = SIGMA_DATA,
    sigma_switch: float = 0.0,
    rescale_cap: float = 0.0,
    ambient_fraction: float = 0.0,
    switch_ratio: float = 1.0,
    switch_offset: float = 0.0,
    level_floor: float = 0.0,
) -> Callable[..., tuple[jax.Array, dict]]:
    """Build the training objective as a pure function.

    Returns objective_fn(denoise, x0 [B,H,W,C], x_tn [B,H,W,C], example_keys [B]) -> (loss [B],
    aux) where aux has "is_ambient" [B] (bool) and "sigma" [B] (VE noise level). x_tn: the rows'
    noisy copies (losses.noisy_copy, made and augmented with their images by the trainer); None
    for ddpm, which never reads them.
    Every random draw of row b comes from example_keys[b], so a row's loss does not depend on
    how the batch is split over devices. `objective="ddpm"` is the plain denoising objective.
    The ambient branch begins at losses.branch_boundary(sigma_tn, sigma_switch, switch_ratio,
    switch_offset) (paper rule; sigma_switch 0 = sigma_tn; switch_ratio losses.gate_ratio(s_max)
    is the group's gate) and rescale_cap (0 = none) caps the rescaled weight: the
    bounded-variance variants of the module docstring. Settings are checked by
    losses.check_config, the check config.loss gets at config time.

    Per-image sigma_tn (paper rule): objective_fn(..., x_tn, image_sigma_tn [B], image_clean [B]
    [, image_sigma_max [B]]) gives each row its image's own level, whether its clean version is
    at hand and (optionally) the top of its window; each row's branch boundary is then
    losses.branch_boundary(image_sigma_tn, 0, switch_ratio, switch_offset). See image_window
    and _per_image_rows.

    level_floor > 0 (paper rule; finetune.train_above): only levels >= level_floor train, each
    row's level drawn from the log-normal conditioned above it (a row that fell below is redrawn
    above from the same normal draw, _redraw_above), so every level above keeps its share.
    """
    settings = dict(
        objective=objective, sigma_tn=sigma_tn, branch_rule=branch_rule, weighting=weighting,
        p_mean=p_mean, p_std=p_std, sigma_data=sigma_data, sigma_switch=sigma_switch,
        rescale_cap=rescale_cap, ambient_fraction=ambient_fraction, switch_ratio=switch_ratio,
        switch_offset=switch_offset,
    )  # fmt: skip
    losses.check_config(ml_collections.ConfigDict(settings), level_floor)
    sigma_tn = losses.effective_sigma_tn(objective, sigma_tn)
    if branch_rule == "lecture":
        return functools.partial(
            _lecture_rule,
            sigma_tn=sigma_tn,
            weighting=weighting,
            p_mean=p_mean,
            p_std=p_std,
            sigma_data=sigma_data,
        )
    return functools.partial(
        _paper_rule,
        boundary=losses.branch_boundary(sigma_tn, sigma_switch, switch_ratio, switch_offset),
        rescale_cap=float(rescale_cap),
        ambient_fraction=float(ambient_fraction),
        switch_ratio=float(switch_ratio),
        switch_offset=float(switch_offset),
        level_floor=float(level_floor),
        sigma_tn=sigma_tn,
        weighting=weighting,
        p_mean=p_mean,
        p_std=p_std,
        sigma_data=sigma_data,
    )


def _needs_copies(x_tn):
    if x_tn is None:
        raise ValueError(
            "the ambient objective needs x_tn, the rows' noisy copies: losses.noisy_copy(x0, "
            "source_index, sigma_tn, losses.noise_tn_key(config.loss))"
        )
    return x_tn


class RowDraws(NamedTuple):
    """Every random draw of a batch's rows, each row's from its own key."""

    normal: jax.Array  # [B] standard normal behind the row's level (log_normal_level)
    uniform: jax.Array  # [B] uniform on [0, 1): the branch coin of ambient_fraction, t in VP
    coin: jax.Array  # [B] fair coin: the lecture rule's branch
    noise: jax.Array  # [B, *image_shape] the fresh noise


def row_draws(example_keys: jax.Array, image_shape: tuple, dtype: Any) -> RowDraws:
    """The rows' draws, the one helper both the loss and a batch drawn for its rows' levels
    (row_levels) call, so that the two read the same level."""

    def draw(key):
        k_level, k_uniform, k_coin, k_noise = jax.random.split(key, 4)
        return RowDraws(
            jax.random.normal(k_level, (), dtype),
            jax.random.uniform(k_uniform, (), dtype),
            jax.random.bernoulli(k_coin),
            jax.random.normal(k_noise, image_shape, dtype),
        )

    return jax.vmap(draw)(example_keys)


def log_normal_level(normal: jax.Array, p_mean: float, p_std: float) -> jax.Array:
    """EDM's training level, ln sigma ~ N(p_mean, p_std^2), from its standard normal."""
    return jnp.exp(p_mean + p_std * normal)


def row_levels(
    example_keys: jax.Array, p_mean: float, p_std: float, dtype: Any = jnp.float32
) -> jax.Array:
    """Each row's log-normal level as the paper rule draws it (before a floor or a corrupted
    image's boundary moves it): what a batch drawn level first is drawn for (data of mixed
    quality, train_step.row_sigmas)."""
    return log_normal_level(row_draws(example_keys, (), dtype).normal, p_mean, p_std)


def _paper_rule(
    denoise,
    x0,
    x_tn,
    example_keys,
    image_sigma_tn=None,
    image_clean=None,
    image_sigma_max=None,
    *,
    sigma_tn,
    weighting,
    p_mean,
    p_std,
    sigma_data,
    boundary,
    rescale_cap,
    ambient_fraction,
    switch_ratio=1.0,
    switch_offset=0.0,
    level_floor=0.0,
):
    normal, uniform, coin, noise = row_draws(example_keys, x0.shape[1:], x0.dtype)
    sigma = log_normal_level(normal, p_mean, p_std)
    if level_floor:  # only levels above the floor train: the log-normal conditioned above it
        sigma = jnp.where(
            sigma >= level_floor, sigma, _redraw_above(normal, level_floor, p_mean, p_std)
        )
    if image_sigma_tn is not None:
        return _per_image_rows(
            denoise, x0, _needs_copies(x_tn), image_sigma_tn, image_clean, sigma, normal, noise,
            image_sigma_max, weighting=weighting, p_mean=p_mean, p_std=p_std,
            sigma_data=sigma_data, rescale_cap=rescale_cap, switch_ratio=switch_ratio,
            switch_offset=switch_offset,
        )  # fmt: skip
    if sigma_tn == 0.0:
        is_ambient = jnp.zeros(sigma.shape, bool)
        loss = two_regime_ve(denoise, x0, sigma, 0.0, noise, sigma_data, weighting)
        return loss, {"is_ambient": is_ambient, "sigma": sigma}
    if ambient_fraction:
        is_ambient = uniform < ambient_fraction
        sigma = _truncated_log_normal(normal, is_ambient, boundary, p_mean, p_std)
    else:
        is_ambient = sigma >= boundary
    target = jnp.where(expand_rows(is_ambient, x0), _needs_copies(x_tn), x0)
    level = jnp.where(is_ambient, sigma_tn, 0.0)
    loss = two_regime_ve(denoise, target, sigma, level, noise, sigma_data, weighting, rescale_cap)
    return loss, {"is_ambient": is_ambient, "sigma": sigma}


def image_window(
    sigma_tn: Any,
    clean: Any,
    sigma_max: Any,
    switch_ratio: float,
    switch_offset: float,
    xp: Any = jnp,
) -> tuple[Any, Any]:
    """The levels [lo, hi] an image trains at (Daras et al. 2025, Ambient Diffusion Omni), the one
    definition the data holder (numpy, xp=np), the batch drawn level first and the loss read:
      * clean: [0, sigma_max] (sigma_max inf: every level);
      * corrupted: [its branch boundary, sigma_max], with the ambient loss on its noisy copy;
      * out of distribution (clean, finite sigma_max): [0, sigma_max], plain denoising.
    The boundary is losses.branch_boundary(sigma_tn, 0, switch_ratio, switch_offset)."""
    boundary = losses.branch_boundary(sigma_tn, 0.0, switch_ratio, switch_offset)
    return xp.where(clean, 0.0, boundary), sigma_max


def _per_image_rows(
    denoise, x0, x_tn, image_sigma_tn, image_clean, sigma, normal, noise, image_sigma_max=None, *,
    weighting, p_mean, p_std, sigma_data, rescale_cap, switch_ratio, switch_offset,
):  # fmt: skip
    """Rows that carry their image's own sigma_tn (Daras et al. 2025, Ambient Diffusion Omni).

    image_sigma_tn [B]: the level above which row b's image is usable; image_clean [B]: whether
    its clean version is at hand. Each row's branch boundary is its own,
        s_b = losses.branch_boundary(image_sigma_tn[b], 0, switch_ratio, switch_offset).
      * clean image, sigma_tn 0: plain denoising at every level (a ddpm row);
      * clean image, sigma_tn > 0: today's ambient row, denoising on x0 below s_b and the ambient
        loss on its fixed noisy copy x0 + sigma_tn eps_i above it;
      * corrupted image (image_clean False): its noisy observation x_tn (the image as given, or
        with the fixed noise it lacks added by the trainer) trains only the levels sigma >= s_b,
        with the ambient loss on it. A row drawn below s_b
        is redrawn from the log-normal conditioned on sigma >= s_b (_redraw_above, from the same
        normal draw), never weighted 0: at a boundary of 1.2 under ln sigma ~
        N(-1.2, 1.2^2), 87% of a corrupted image's rows would otherwise carry no gradient. Kept
        above, redrawn below: either way the row's level is the log-normal conditioned above s_b,
        so each level above s_b keeps the minimiser of the clean objective (D = E[x0 | x_sigma]
        for every row drawn there; the lecture's Exercise 1 for the ambient rows).
    Which levels get how many rows is the batch's business (train_step.gather_batch): drawn image
    first, a corrupted image's rows all move above its boundary, so with many corrupted images
    the low levels see few rows; drawn level first (the group's training loop: a level from the
    log-normal, then an image among those usable there), every level keeps its log-normal share
    and only the lowest-boundary fallback of an empty level is ever redrawn here.
    With every image clean at one sigma_tn (switch_ratio 1, switch_offset 0) this is the paper
    rule's loss exactly, draw for draw.

    image_sigma_max [B] (Omni's out-of-distribution images, any image's window top; inf = none):
    a row whose image has a finite top trains only inside its window [lo, hi] (image_window), a
    row drawn outside it redrawn from the log-normal conditioned on the window (_redraw_between,
    the same draw's). Rows without a top are untouched, so with none the loss is today's to the
    bit.
    """
    dtype = x0.dtype
    sigma_tn = jnp.asarray(image_sigma_tn, dtype)
    clean = jnp.asarray(image_clean, bool)
    boundary = losses.branch_boundary(sigma_tn, 0.0, switch_ratio, switch_offset)
    # a corrupted row at a level it cannot train: redrawn above its boundary
    redrawn = _redraw_above(normal, jnp.maximum(boundary, 1e-6), p_mean, p_std)
    drawn = sigma
    sigma = jnp.where(clean | (drawn >= boundary), drawn, redrawn)
    if image_sigma_max is not None:
        lo, hi = image_window(
            sigma_tn, clean, jnp.asarray(image_sigma_max, dtype), switch_ratio, switch_offset
        )
        inside = (drawn >= lo) & (drawn <= hi)
        within = jnp.where(inside, drawn, _redraw_between(normal, lo, hi, p_mean, p_std))
        sigma = jnp.where(jnp.isfinite(hi), within, sigma)
    noisy = sigma_tn > 0
    is_ambient = noisy & (~clean | (sigma >= boundary))
    target = jnp.where(expand_rows(is_ambient, x0), x_tn, x0)
    level = jnp.where(is_ambient, sigma_tn, 0.0)
    loss = two_regime_ve(denoise, target, sigma, level, noise, sigma_data, weighting, rescale_cap)
    return loss, {"is_ambient": is_ambient, "sigma": sigma}


def _redraw_above(normal, boundary, p_mean, p_std):
    """For a row whose level exp(p_mean + p_std normal) fell below `boundary`: a level from the
    log-normal conditioned above it. Given normal < z_cut, u = Phi(normal) / Phi(z_cut) is
    uniform on (0, 1), and the level whose upper-tail probability is u Phi(-z_cut) is then
    distributed as the log-normal above the boundary; so a row kept where it fell above and one
    redrawn this way share one distribution, the truncated log-normal (and the redraw is the same
    draw's, no new key)."""
    z_cut = (jnp.log(boundary) - p_mean) / p_std
    u = jnp.clip(ndtr(normal) / ndtr(z_cut), 0.0, 1.0)
    z = -ndtri(jnp.maximum(u * ndtr(-z_cut), 1e-30))
    return jnp.maximum(jnp.exp(p_mean + p_std * z), boundary * (1 + 1e-5))


def _redraw_between(normal, lo, hi, p_mean, p_std):
    """For a row whose level exp(p_mean + p_std normal) fell outside [lo, hi] (lo may be 0): a
    level from the log-normal conditioned on [lo, hi]. Given the draw fell outside, its CDF
    value's position among the outside values, u, is uniform on (0, 1); the level at CDF value
    C(lo) + u (C(hi) - C(lo)) is then the truncated log-normal, as _redraw_above's is above."""
    cdf = lambda level: ndtr((jnp.log(jnp.maximum(level, 1e-30)) - p_mean) / p_std)
    c_lo, c_hi, c = jnp.where(lo > 0, cdf(lo), 0.0), cdf(hi), ndtr(normal)
    outside = jnp.where(c < c_lo, c, c_lo + (c - c_hi))  # position among the outside values
    u = jnp.clip(outside / jnp.maximum(c_lo + (1 - c_hi), 1e-30), 0.0, 1.0)
    z = ndtri(jnp.clip(c_lo + u * (c_hi - c_lo), 1e-30, 1 - 1e-7))
    return jnp.clip(jnp.exp(p_mean + p_std * z), lo, hi)


def _truncated_log_normal(normal, above, boundary, p_mean, p_std):
    """ln sigma ~ N(p_mean, p_std^2) conditioned on sigma >= boundary where `above`, else on
    sigma < boundary, by the inverse CDF within the branch. Each branch works on its own tail
    probability (Phi(normal) below, Phi(-normal) = 1 - Phi(normal) above), which float32 keeps
    accurate: cut + q (1 - cut) rounds to 1 for q near 1, and ndtri(1) is inf."""
    z_cut = (jnp.log(boundary) - p_mean) / p_std
    lower = ndtri(jnp.maximum(ndtr(normal) * ndtr(z_cut), 1e-30))
    upper = -ndtri(jnp.maximum(ndtr(-normal) * ndtr(-z_cut), 1e-30))
    sigma = jnp.exp(p_mean + p_std * jnp.where(above, upper, lower))
    return jnp.where(
        above, jnp.maximum(sigma, boundary * (1 + 1e-5)), jnp.minimum(sigma, boundary * (1 - 1e-5))
    )


def _lecture_rule(
    denoise,
    x0,
    x_tn,
    example_keys,
    *,
    sigma_tn,
    weighting,
    p_mean,
    p_std,
    sigma_data,
):
    del weighting, p_mean, p_std, sigma_data  # Algorithm 1 is unweighted and draws t uniformly
    _, uniform, coin, noise = row_draws(example_keys, x0.shape[1:], x0.dtype)
    t_min, t_max = schedules.VP_T_MIN, schedules.VP_T_MAX
    s_tn = float(schedules.ve_sigma_to_vp(sigma_tn))
    t_n = float(schedules.vp_t_of_s(s_tn))
    # From S_tn when the coin says so; with t_n <= t_min there is no clean range left and
    # S_tn = S, so every row is the (then plain) noisy-branch loss over the whole time range.
    is_ambient = coin | (t_n <= t_min)
    t_n = max(t_n, t_min)
    t = jnp.where(is_ambient, t_n + uniform * (t_max - t_n), t_min + uniform * (t_n - t_min))
    s = schedules.vp_s_of_t(t)
    if sigma_tn > 0:
        x_tn_vp = schedules.ve_to_vp_x(_needs_copies(x_tn), sigma_tn)
        target = jnp.where(expand_rows(is_ambient, x0), x_tn_vp, x0)
    else:
        target = x0
    level = jnp.where(is_ambient, s_tn, 0.0)
    loss = ambient_loss_vp(vp_denoiser(denoise), target, s, level, noise)
    return loss, {"is_ambient": is_ambient & (sigma_tn > 0), "sigma": schedules.vp_to_ve_sigma(s)}
