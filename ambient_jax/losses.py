"""Pure loss functions: plain denoising ("DDPM"/EDM) and ambient score matching.

All losses take a denoiser `denoise(x, sigma) -> x0_hat` (VE / EDM convention, x [B,H,W,C],
sigma [B]) and return a per-example loss of shape [B]: summed over pixels, to be averaged
over the batch by the caller (the paper's code: sum over pixels, mean over the batch).

Plain denoising (Karras et al. 2022, eq. 2 with the EDM weight):
    L(x0, sigma) = lambda(sigma) || D(x0 + sigma n, sigma) - x0 ||^2,
    lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2.

Ambient score matching in VE form (the lecture's eq. (5); Shah et al. 2025, the paper's code),
trained only on one fixed noisy copy x_tn = x0 + sigma_tn eps_i of each image, sigma >= sigma_tn:
    x_s    = x_tn + sqrt(sigma^2 - sigma_tn^2) n
    x_tn^  = ((sigma^2 - sigma_tn^2) / sigma^2) D(x_s, sigma) + (sigma_tn^2 / sigma^2) x_s
    L      = lambda(sigma) || x_tn^ - x_tn ||^2.
Its minimiser is D = E[x0 | x_s] although x0 is never seen (the lecture's Exercise 1).
Weighting "rescaled" multiplies the ambient branch by sigma^4 / (sigma^2 - sigma_tn^2)^2
(a later paper of the same group); "none" drops lambda.

Why the ambient branch is noisy just above sigma_tn, and the two bounded variants. Writing
a = (sigma^2 - sigma_tn^2) / sigma^2, the ambient loss is lambda a^2 ||D - y||^2 with the target
    y = (sigma^2 x_tn - sigma_tn^2 x_s) / (sigma^2 - sigma_tn^2) = x0 + sigma_tn eps - (sigma_tn^2 /
    g) n,
g = sqrt(sigma^2 - sigma_tn^2). Per pixel, y - x0 has variance
    v(sigma) = sigma_tn^2 + sigma_tn^4 / (sigma^2 - sigma_tn^2),
unbounded as sigma -> sigma_tn. "rescaled" weighs ||D - y||^2 by lambda alone, so its expected
loss and gradient noise diverge there (logarithmically under the log-normal sigma draw); "edm"
weighs it by lambda a^2, which vanishes there, so that region is barely trained.
  * rescale_cap = C > 0 caps the rescale factor at C: the weight on ||D - y||^2 becomes
    lambda min(1, C a^2). Since g^2 = a sigma^2 >= a sigma_tn^2, min(1, C a^2) sigma_tn^4 / g^2
    <= min(1/a, C a) sigma_tn^2 <= C^(1/2) sigma_tn^2, so the weighted target variance is at most
    lambda (1 + C^(1/2)) sigma_tn^2: bounded, with the region right above sigma_tn damped as "edm"
    does.
  * weighting "normalized" (inverse-variance): the ambient row's weight on ||D - y||^2 is
    lambda sd^2 / (sd^2 + v(sigma)). A clean row's target x0 deviates from E[x0 | x] by at most
    the data variance sd^2 per pixel, an ambient row's y by that plus v(sigma) >= sigma_tn^2, so
    with "rescaled" the ambient rows' loss (and its gradient noise) is (sd^2 + v) / sd^2 times a
    clean row's: 10x at sigma_tn = 1.5 far from sigma_tn, unbounded near it, and under Adam's
    normalised step they drown the clean rows. Weighting each row by the inverse of its target
    variance (as weighted least squares does) keeps every sigma's minimiser D = E[x0 | x_s] and
    bounds the weighted target variance by lambda sd^2, the clean rows' own level.
  * sigma_switch = S > sigma_tn moves the branch boundary up: rows with sigma < S use the clean
    loss, rows with sigma >= S the ambient loss on x_tn. Then v(sigma) <= sigma_tn^2 +
    sigma_tn^4 / (S^2 - sigma_tn^2) on every ambient row, and no clean image is seen above S.

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

The fixed noise of S_tn is a pure function of (noise key, image index): the same image gets the
same noisy copy in every epoch, after every restart and on any device count.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from ambient_jax import schedules
from ambient_jax.checks import need, need_each
from ambient_jax.precond import SIGMA_DATA, Denoiser, vp_denoiser
from ambient_jax.schedules import _expand

BRANCH_RULES = ("paper", "lecture")
OBJECTIVES = ("ddpm", "ambient")


def effective_sigma_tn(objective: str, sigma_tn: float) -> float:
    """The noise level of the fixed noisy copies an objective trains on: the one place that says
    "ddpm is sigma_tn = 0" (a sweep's sigma_tn = 0 column is the ddpm run)."""
    return float(sigma_tn) if objective == "ambient" else 0.0


def objective_for(sigma_tn: float) -> str:
    """The objective of a sweep point: ddpm at sigma_tn = 0, ambient above."""
    return "ambient" if sigma_tn > 0 else "ddpm"


def sigma_tn_label(sigma_tn: float) -> str:
    """How tables and plots name a run's objective: "ddpm" or "s_tn=0.5"."""
    return f"s_tn={sigma_tn:g}" if sigma_tn > 0 else "ddpm"


def edm_weight(sigma: float | jax.Array, sigma_data: float = SIGMA_DATA) -> jax.Array:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM's loss weight)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _sum_sq(x):
    return jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))


# ----------------------------------------------------------------------------- weightings
# Each weighting multiplies a row's ||prediction - target||^2 (the module docstring derives them).
# Arguments: sigma, sigma_tn (0 on clean rows), noisy (sigma_tn > 0), safe_gap (sigma^2 -
# sigma_tn^2 floored relative to sigma^2), sigma_data, rescale_cap. A new weighting is one function
# and one entry of WEIGHTING_TABLE: the loss, the config check and ambient-train's --help read it.


def _no_weight(sigma, sigma_tn, noisy, safe_gap, sigma_data, rescale_cap):
    return jnp.ones_like(sigma)


def _edm_weighting(sigma, sigma_tn, noisy, safe_gap, sigma_data, rescale_cap):
    return edm_weight(sigma, sigma_data)


def _rescale_factor(sigma, safe_gap, rescale_cap):
    factor = sigma**4 / safe_gap**2
    if rescale_cap:
        factor = jnp.minimum(factor, rescale_cap)
    return factor


def _rescaled_weighting(sigma, sigma_tn, noisy, safe_gap, sigma_data, rescale_cap):
    factor = _rescale_factor(sigma, safe_gap, rescale_cap)
    return edm_weight(sigma, sigma_data) * jnp.where(noisy, factor, 1.0)


def _normalized_weighting(sigma, sigma_tn, noisy, safe_gap, sigma_data, rescale_cap):
    factor = _rescale_factor(sigma, safe_gap, rescale_cap)
    # times sd^2 / (sd^2 + v), v = sigma_tn^2 + sigma_tn^4 / gap
    variance = sigma_tn**2 + sigma_tn**4 / safe_gap
    factor = factor * sigma_data**2 / (sigma_data**2 + variance)
    return edm_weight(sigma, sigma_data) * jnp.where(noisy, factor, 1.0)


# name -> (weight function, what it is)
WEIGHTING_TABLE = {
    "edm": (_edm_weighting, "EDM's lambda(sigma) on both branches: the paper's code"),
    "rescaled": (
        _rescaled_weighting,
        "ambient rows times sigma^4 / (sigma^2 - sigma_tn^2)^2 (a later paper of the same group)",
    ),
    "normalized": (
        _normalized_weighting,
        "rescaled times the inverse variance of the ambient target, sd^2 / (sd^2 + v(sigma))",
    ),
    "none": (_no_weight, "unweighted squared error"),
}
WEIGHTINGS = tuple(WEIGHTING_TABLE)  # the names as shipped (tests parametrize over them)


def weighting_help() -> str:
    """One line per weighting, for --help."""
    return "\n".join(f"  {name:10s} {what}" for name, (_, what) in WEIGHTING_TABLE.items())


def _two_regime_ve(denoise, target, sigma, sigma_tn, noise, sigma_data, weighting, rescale_cap=0.0):
    """One network call for a batch whose rows may sit on either branch.

    Row b trains on `target[b]` observed at noise level sigma_tn[b] (0 for a clean row) and is
    perturbed up to sigma[b]. With sigma_tn[b] = 0 the row is the plain denoising loss exactly.
    """
    if weighting not in WEIGHTING_TABLE:
        raise ValueError(
            f"loss weighting must be one of {tuple(WEIGHTING_TABLE)}, got {weighting!r}"
        )
    sigma = jnp.asarray(sigma, target.dtype)
    sigma_tn = jnp.broadcast_to(jnp.asarray(sigma_tn, target.dtype), sigma.shape)
    noisy = sigma_tn > 0
    gap = jnp.maximum(sigma**2 - sigma_tn**2, 0.0)  # variance still to add on top of x_tn
    extra = jnp.where(noisy, jnp.sqrt(gap), sigma)
    keep_d = jnp.where(noisy, gap / sigma**2, 1.0)
    keep_x = jnp.where(noisy, sigma_tn**2 / sigma**2, 0.0)

    x = target + _expand(extra, target) * noise
    d = denoise(x, sigma)
    prediction = _expand(keep_d, x) * d + _expand(keep_x, x) * x
    loss = _sum_sq(prediction - target)
    # The gap is floored relative to sigma^2 (a row within 1e-6 of sigma_tn): an absolute floor
    # squared underflows in float32, and inf times the row's zero loss would be NaN.
    safe_gap = jnp.maximum(gap, 1e-6 * sigma**2)
    weight = WEIGHTING_TABLE[weighting][0]
    return loss * weight(sigma, sigma_tn, noisy, safe_gap, sigma_data, rescale_cap)


def denoising_loss(
    denoise: Denoiser,
    x0: jax.Array,
    sigma: float | jax.Array,
    noise: jax.Array,
    sigma_data: float = SIGMA_DATA,
) -> jax.Array:
    """Per-example EDM denoising loss lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2, shape [B]."""
    zeros = jnp.zeros(jnp.shape(sigma), x0.dtype)
    return _two_regime_ve(denoise, x0, sigma, zeros, noise, sigma_data, "edm")


def ambient_loss(
    denoise: Denoiser,
    x_tn: jax.Array,
    sigma: float | jax.Array,
    sigma_tn: float,
    noise: jax.Array,
    sigma_data: float = SIGMA_DATA,
    weighting: str = "edm",
    rescale_cap: float = 0.0,
) -> jax.Array:
    """Per-example ambient score-matching loss (VE form) for sigma >= sigma_tn, shape [B].

    x_tn is the fixed noisy copy x0 + sigma_tn eps; noise is fresh N(0, I) of x_tn's shape.
    rescale_cap > 0 caps the "rescaled" factor sigma^4 / (sigma^2 - sigma_tn^2)^2 at that value.
    """
    return _two_regime_ve(denoise, x_tn, sigma, sigma_tn, noise, sigma_data, weighting, rescale_cap)


# ----------------------------------------------------------------------------- VP form


def ambient_loss_vp(
    h: Denoiser, x_tn: jax.Array, s: float | jax.Array, s_tn: float, noise: jax.Array
) -> jax.Array:
    """The lecture's eq. (5) literally (VP form, unweighted), per example, for s >= s_tn.

    x_t = sqrt((1-s^2)/(1-s_tn^2)) x_tn + sqrt((s^2-s_tn^2)/(1-s_tn^2)) n
    L   = || (s^2-s_tn^2)/(s^2 sqrt(1-s_tn^2)) h(x_t) + s_tn^2/s^2 sqrt((1-s^2)/(1-s_tn^2)) x_t -
    x_tn ||^2
    With s_tn = 0 this is the plain VP denoising loss ||h(sqrt(1-s^2) x0 + s n) - x0||^2 exactly.
    """
    s = jnp.asarray(s, x_tn.dtype)
    s_tn = jnp.broadcast_to(jnp.asarray(s_tn, x_tn.dtype), s.shape)
    noisy = s_tn > 0
    keep = 1.0 - s_tn**2
    gap = jnp.maximum(s**2 - s_tn**2, 0.0)
    scale_x = jnp.where(noisy, jnp.sqrt((1.0 - s**2) / keep), jnp.sqrt(1.0 - s**2))
    scale_n = jnp.where(noisy, jnp.sqrt(gap / keep), s)
    x_t = _expand(scale_x, x_tn) * x_tn + _expand(scale_n, x_tn) * noise
    coef_h = jnp.where(noisy, gap / (s**2 * jnp.sqrt(keep)), 1.0)
    coef_x = jnp.where(noisy, s_tn**2 / s**2 * jnp.sqrt((1.0 - s**2) / keep), 0.0)
    prediction = _expand(coef_h, x_t) * h(x_t, s) + _expand(coef_x, x_t) * x_t
    return _sum_sq(prediction - x_tn)


# ----------------------------------------------------------------------------- fixed noise of S_tn


def fixed_noise(
    noise_key: jax.Array, image_index: jax.Array, image_shape: tuple[int, ...], dtype=jnp.float32
) -> jax.Array:
    """eps_i for each image index: N(0, I) drawn from fold_in(noise_key, i); shape [B,
    *image_shape]."""
    image_index = jnp.asarray(image_index, jnp.uint32)
    draw = lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), image_shape, dtype)
    return jax.vmap(draw)(image_index)


def noisy_copy(
    x0: jax.Array, image_index: jax.Array, sigma_tn: float, noise_key: jax.Array
) -> jax.Array:
    """The element of S_tn for each image: x_tn = x0 + sigma_tn eps_i (VE form)."""
    return x0 + sigma_tn * fixed_noise(noise_key, image_index, x0.shape[1:], x0.dtype)


# fold_in purpose of the noisy copies' key (the trainer's own keys use 0 and 1 of another root)
KEY_NOISE_TN = 2


def noise_tn_key(loss_config) -> jax.Array:
    """The key of the fixed noise of S_tn (fixed_noise): loss.noise_seed alone, so an image's
    noisy copy is the same in every run, train seed and subset (with the image's source index, as
    the paper's code seeds it by the raw image index)."""
    return jax.random.fold_in(jax.random.key(loss_config.noise_seed), KEY_NOISE_TN)


def noisy_training_copies(loss_config, images, source_indices) -> jax.Array:
    """S_tn as a run with these loss settings trains on it: x_tn for every training image, keyed
    by its source index (x0 itself for ddpm, whose sigma_tn is 0)."""
    images = jnp.asarray(images, jnp.float32)
    index = jnp.asarray(source_indices, jnp.int32)
    sigma_tn = effective_sigma_tn(loss_config.objective, loss_config.sigma_tn)
    return noisy_copy(images, index, sigma_tn, noise_tn_key(loss_config))


# ----------------------------------------------------------------------------- batch objective


def make_objective(
    objective: str = "ambient",
    sigma_tn: float = 0.5,
    branch_rule: str = "paper",
    weighting: str = "edm",
    noise_key: jax.Array | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = SIGMA_DATA,
    sigma_switch: float = 0.0,
    rescale_cap: float = 0.0,
    ambient_fraction: float = 0.0,
    switch_ratio: float = 1.0,
    switch_offset: float = 0.0,
) -> Callable[..., tuple[jax.Array, dict]]:
    """Build the training objective as a pure function.

    Returns objective_fn(denoise, x0 [B,H,W,C], image_index [B], example_keys [B], x_tn=None)
    -> (loss [B], aux) where aux has "is_ambient" [B] (bool) and "sigma" [B] (VE noise level).
    x_tn: the rows' noisy copies when the caller made them (the trainer augments them with their
    clean images); None = noisy_copy(x0, image_index, sigma_tn, noise_key).
    Every random draw of row b comes from example_keys[b], so a row's loss does not depend on
    how the batch is split over devices. `objective="ddpm"` is the plain denoising objective.
    sigma_switch (paper rule; 0 = sigma_tn) is where the ambient branch begins and rescale_cap
    (0 = none) caps the rescaled weight: the bounded-variance variants of the module docstring.

    Per-image sigma_tn (paper rule): objective_fn(..., x_tn, image_sigma_tn [B], image_clean [B])
    gives each row its image's own level and whether its clean version is at hand; each row's
    branch boundary is then image_sigma_tn * switch_ratio + switch_offset (the group's gate:
    switch_ratio sqrt(1 + 1 / (s_max - 1)), 1.155 at s_max = 4). See _per_image_rows.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"loss.objective must be one of {OBJECTIVES}, got {objective!r}")
    if branch_rule not in BRANCH_RULES:
        raise ValueError(f"loss.branch_rule must be one of {BRANCH_RULES}, got {branch_rule!r}")
    if weighting not in WEIGHTING_TABLE:
        raise ValueError(
            f"loss.weighting must be one of {tuple(WEIGHTING_TABLE)}, got {weighting!r}"
        )
    sigma_tn = effective_sigma_tn(objective, sigma_tn)
    if sigma_tn < 0:
        raise ValueError(f"loss.sigma_tn must be >= 0, got {sigma_tn}")
    if sigma_tn > 0 and noise_key is None:
        raise ValueError(
            "the ambient objective needs noise_key, the key of the fixed noise of S_tn"
        )
    if sigma_switch and sigma_switch < sigma_tn:
        raise ValueError(
            f"loss.sigma_switch must be 0 (= sigma_tn) or >= loss.sigma_tn = {sigma_tn}, got "
            f"{sigma_switch}"
        )
    if rescale_cap < 0:
        raise ValueError(f"loss.rescale_cap must be >= 0 (0 = no cap), got {rescale_cap}")
    if switch_ratio < 1.0 or switch_offset < 0.0:
        raise ValueError(
            f"loss.switch_ratio must be >= 1 and loss.switch_offset >= 0, got {switch_ratio} and "
            f"{switch_offset}"
        )
    if not 0.0 <= ambient_fraction < 1.0:
        raise ValueError(
            "loss.ambient_fraction must be in [0, 1) (0 = the log-normal decides), got "
            f"{ambient_fraction}"
        )
    if branch_rule == "lecture":
        if sigma_switch or rescale_cap or ambient_fraction:
            raise ValueError(
                "loss.sigma_switch, loss.rescale_cap and loss.ambient_fraction belong to "
                "branch_rule=paper"
            )
        return functools.partial(
            _lecture_rule,
            sigma_tn=sigma_tn,
            weighting=weighting,
            noise_key=noise_key,
            p_mean=p_mean,
            p_std=p_std,
            sigma_data=sigma_data,
        )
    return functools.partial(
        _paper_rule,
        sigma_switch=max(float(sigma_switch), sigma_tn),
        rescale_cap=float(rescale_cap),
        ambient_fraction=float(ambient_fraction),
        switch_ratio=float(switch_ratio),
        switch_offset=float(switch_offset),
        sigma_tn=sigma_tn,
        weighting=weighting,
        noise_key=noise_key,
        p_mean=p_mean,
        p_std=p_std,
        sigma_data=sigma_data,
    )


def row_level_normal(example_keys, dtype=jnp.float32):
    """The standard normal behind each row's noise level, sigma = exp(p_mean + p_std normal): the
    first of _row_draws, so a batch can be drawn for its rows' levels (data of mixed quality)."""
    return jax.vmap(lambda key: jax.random.normal(jax.random.split(key, 4)[0], (), dtype))(
        example_keys
    )


def _row_draws(example_keys, image_shape, dtype):
    """Per-row standard normal scalar, uniform scalar, coin and image-shaped noise."""

    def draw(key):
        k_level, k_uniform, k_coin, k_noise = jax.random.split(key, 4)
        return (
            jax.random.normal(k_level, (), dtype),
            jax.random.uniform(k_uniform, (), dtype),
            jax.random.bernoulli(k_coin),
            jax.random.normal(k_noise, image_shape, dtype),
        )

    return jax.vmap(draw)(example_keys)


def _paper_rule(
    denoise,
    x0,
    image_index,
    example_keys,
    x_tn=None,
    image_sigma_tn=None,
    image_clean=None,
    *,
    sigma_tn,
    weighting,
    noise_key,
    p_mean,
    p_std,
    sigma_data,
    sigma_switch,
    rescale_cap,
    ambient_fraction,
    switch_ratio=1.0,
    switch_offset=0.0,
):
    normal, uniform, coin, noise = _row_draws(example_keys, x0.shape[1:], x0.dtype)
    sigma = jnp.exp(p_mean + p_std * normal)
    if image_sigma_tn is not None:
        return _per_image_rows(
            denoise, x0, image_index, x_tn, image_sigma_tn, image_clean, sigma, normal, noise,
            noise_key=noise_key, weighting=weighting, p_mean=p_mean, p_std=p_std,
            sigma_data=sigma_data, rescale_cap=rescale_cap, switch_ratio=switch_ratio,
            switch_offset=switch_offset,
        )  # fmt: skip
    if sigma_tn == 0.0:
        is_ambient = jnp.zeros(sigma.shape, bool)
        loss = _two_regime_ve(denoise, x0, sigma, 0.0, noise, sigma_data, weighting)
        return loss, {"is_ambient": is_ambient, "sigma": sigma}
    if ambient_fraction:
        is_ambient = uniform < ambient_fraction
        sigma = _truncated_log_normal(normal, is_ambient, sigma_switch, p_mean, p_std)
    else:
        is_ambient = sigma >= sigma_switch
    if x_tn is None:
        x_tn = noisy_copy(x0, image_index, sigma_tn, noise_key)
    target = jnp.where(_expand(is_ambient, x0), x_tn, x0)
    level = jnp.where(is_ambient, sigma_tn, 0.0)
    loss = _two_regime_ve(denoise, target, sigma, level, noise, sigma_data, weighting, rescale_cap)
    return loss, {"is_ambient": is_ambient, "sigma": sigma}


def _per_image_rows(
    denoise, x0, image_index, x_tn, image_sigma_tn, image_clean, sigma, normal, noise, *, noise_key,
    weighting, p_mean, p_std, sigma_data, rescale_cap, switch_ratio, switch_offset,
):  # fmt: skip
    """Rows that carry their image's own sigma_tn (Daras et al. 2025, Ambient Diffusion Omni).

    image_sigma_tn [B]: the level above which row b's image is usable; image_clean [B]: whether
    its clean version is at hand. Each row's branch boundary is its own,
        s_b = image_sigma_tn[b] * switch_ratio + switch_offset   (>= image_sigma_tn[b]).
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
    """
    dtype = x0.dtype
    sigma_tn = jnp.asarray(image_sigma_tn, dtype)
    clean = jnp.asarray(image_clean, bool)
    boundary = jnp.maximum(sigma_tn * switch_ratio + switch_offset, sigma_tn)
    # a corrupted row at a level it cannot train: redrawn above its boundary
    redrawn = _redraw_above(normal, jnp.maximum(boundary, 1e-6), p_mean, p_std)
    sigma = jnp.where(clean | (sigma >= boundary), sigma, redrawn)
    noisy = sigma_tn > 0
    is_ambient = noisy & (~clean | (sigma >= boundary))
    if x_tn is None:  # a clean image's fixed noisy copy at its own level; a corrupted image as
        # given (the trainer adds the noise it lacks: data.corrupt.annotation_values)
        level = jnp.where(clean, sigma_tn, 0.0)
        x_tn = x0 + _expand(level, x0) * fixed_noise(noise_key, image_index, x0.shape[1:], dtype)
    target = jnp.where(_expand(is_ambient, x0), x_tn, x0)
    level = jnp.where(is_ambient, sigma_tn, 0.0)
    loss = _two_regime_ve(denoise, target, sigma, level, noise, sigma_data, weighting, rescale_cap)
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
    image_index,
    example_keys,
    x_tn=None,
    *,
    sigma_tn,
    weighting,
    noise_key,
    p_mean,
    p_std,
    sigma_data,
):
    del weighting, p_mean, p_std, sigma_data  # Algorithm 1 is unweighted and draws t uniformly
    _, uniform, coin, noise = _row_draws(example_keys, x0.shape[1:], x0.dtype)
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
        if x_tn is None:
            x_tn = noisy_copy(x0, image_index, sigma_tn, noise_key)
        x_tn_vp = schedules.ve_to_vp_x(x_tn, sigma_tn)
        target = jnp.where(_expand(is_ambient, x0), x_tn_vp, x0)
    else:
        target = x0
    level = jnp.where(is_ambient, s_tn, 0.0)
    loss = ambient_loss_vp(vp_denoiser(denoise), target, s, level, noise)
    return loss, {"is_ambient": is_ambient & (sigma_tn > 0), "sigma": schedules.vp_to_ve_sigma(s)}


def check_config(loss) -> None:
    """config.loss values the objective cannot train with, each named (ValueError)."""
    need(loss.objective in OBJECTIVES, "loss.objective", f"must be one of {OBJECTIVES}")
    need(loss.branch_rule in BRANCH_RULES, "loss.branch_rule", f"must be one of {BRANCH_RULES}")
    need(
        loss.weighting in WEIGHTING_TABLE,
        "loss.weighting",
        f"must be one of {tuple(WEIGHTING_TABLE)}",
    )
    need(loss.sigma_tn >= 0, "loss.sigma_tn", "must be >= 0")
    need_each(
        "loss",
        loss,
        (
            ("ambient_fraction", lambda v: 0 <= v <= 1, "must lie in [0, 1]"),
            ("p_mean", lambda v: abs(v) < 1e3, "must be a finite log-sigma"),
            ("p_std", lambda v: v > 0, "must be > 0"),
            ("rescale_cap", lambda v: v >= 0, "must be >= 0 (0 = off)"),
            ("sigma_data", lambda v: v > 0, "must be > 0"),
            ("sigma_switch", lambda v: v >= 0, "must be >= 0 (0 = sigma_tn)"),
            ("switch_ratio", lambda v: v >= 1, "must be >= 1 (1 = no gate)"),
            ("switch_offset", lambda v: v >= 0, "must be >= 0"),
        ),
    )
