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

The fixed noise of S_tn is a pure function of (noise key, image index): the same image gets the
same noisy copy in every epoch, after every restart and on any device count.

Which rows of a batch take which branch, at which level, is ambient_jax.diffusion.objective's.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax.checks import need, need_each
from ambient_jax.diffusion.precond import SIGMA_DATA, Denoiser
from ambient_jax.diffusion.schedules import expand_rows
from ambient_jax.types import Config

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


def edm_weight(sigma: float | jax.Array, sigma_data: float = SIGMA_DATA) -> float | jax.Array:
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


def two_regime_ve(
    denoise: Denoiser,
    target: jax.Array,
    sigma: float | jax.Array,
    sigma_tn: float | jax.Array,
    noise: jax.Array,
    sigma_data: float,
    weighting: str,
    rescale_cap: float = 0.0,
) -> jax.Array:
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

    x = target + expand_rows(extra, target) * noise
    d = denoise(x, sigma)
    prediction = expand_rows(keep_d, x) * d + expand_rows(keep_x, x) * x
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
    return two_regime_ve(denoise, x0, sigma, zeros, noise, sigma_data, "edm")


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
    return two_regime_ve(denoise, x_tn, sigma, sigma_tn, noise, sigma_data, weighting, rescale_cap)


# ----------------------------------------------------------------------------- VP form


def ambient_loss_vp(
    h: Denoiser, x_tn: jax.Array, s: float | jax.Array, s_tn: float | jax.Array, noise: jax.Array
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
    x_t = expand_rows(scale_x, x_tn) * x_tn + expand_rows(scale_n, x_tn) * noise
    coef_h = jnp.where(noisy, gap / (s**2 * jnp.sqrt(keep)), 1.0)
    coef_x = jnp.where(noisy, s_tn**2 / s**2 * jnp.sqrt((1.0 - s**2) / keep), 0.0)
    prediction = expand_rows(coef_h, x_t) * h(x_t, s) + expand_rows(coef_x, x_t) * x_t
    return _sum_sq(prediction - x_tn)


# ----------------------------------------------------------------------------- fixed noise of S_tn


def fixed_noise(
    noise_key: jax.Array,
    image_index: jax.Array,
    image_shape: tuple[int, ...],
    dtype: Any = jnp.float32,
) -> jax.Array:
    """eps_i for each image index: N(0, I) drawn from fold_in(noise_key, i); shape [B,
    *image_shape]."""
    image_index = jnp.asarray(image_index, jnp.uint32)
    draw = lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), image_shape, dtype)
    return jax.vmap(draw)(image_index)


def noisy_copy(
    x0: jax.Array, image_index: jax.Array, sigma_tn: float | jax.Array, noise_key: jax.Array
) -> jax.Array:
    """The element of S_tn for each image: x_tn = x0 + sigma_tn eps_i (VE form); sigma_tn is one
    level or each row's own [B] (data of mixed quality)."""
    eps = fixed_noise(noise_key, image_index, x0.shape[1:], x0.dtype)
    return x0 + expand_rows(sigma_tn, x0) * eps


# fold_in purpose of the noisy copies' key (the trainer's own keys use 0 and 1 of another root)
KEY_NOISE_TN = 2


def noise_tn_key(loss_config: Config) -> jax.Array:
    """The key of the fixed noise of S_tn (fixed_noise): loss.noise_seed alone, so an image's
    noisy copy is the same in every run, train seed and subset (with the image's source index, as
    the paper's code seeds it by the raw image index)."""
    return jax.random.fold_in(jax.random.key(loss_config.noise_seed), KEY_NOISE_TN)


def noisy_training_copies(
    loss_config: Config, images: np.ndarray | jax.Array, source_indices: np.ndarray | jax.Array
) -> jax.Array:
    """S_tn as a run with these loss settings trains on it: x_tn for every training image, keyed
    by its source index (x0 itself for ddpm, whose sigma_tn is 0)."""
    images = jnp.asarray(images, jnp.float32)
    index = jnp.asarray(source_indices, jnp.int32)
    sigma_tn = effective_sigma_tn(loss_config.objective, loss_config.sigma_tn)
    return noisy_copy(images, index, sigma_tn, noise_tn_key(loss_config))


def branch_boundary(
    sigma_tn: Any, sigma_switch: float = 0.0, switch_ratio: float = 1.0, switch_offset: float = 0.0
) -> Any:
    """Where the ambient branch starts for an image whose noisy copy is at sigma_tn: the one
    formula of the branch boundary,
        max(sigma_switch, sigma_tn * switch_ratio + switch_offset, sigma_tn).
    sigma_switch moves a shared boundary up (0 = sigma_tn); switch_ratio and switch_offset are the
    group's gate (gate_ratio), per image or shared. Rows at or above it take the ambient loss on
    the image's noisy copy, rows below it the clean loss; a corrupted image trains only above it.
    sigma_tn: a float (the run's shared level: a float back), a numpy array (the data holder's
    per-image levels) or a jax array (the loss's rows); every caller computes the boundary here."""
    gated = sigma_tn * switch_ratio + switch_offset
    if isinstance(sigma_tn, jax.Array):
        return jnp.maximum(jnp.maximum(gated, sigma_tn), sigma_switch)
    if isinstance(sigma_tn, np.ndarray):
        return np.maximum(np.maximum(gated, sigma_tn), sigma_switch)
    return max(float(sigma_switch), float(gated), float(sigma_tn))


def branch_start(loss: Config) -> float:
    """Where config.loss's ambient branch starts (branch_boundary of its settings), read from the
    settings whatever the objective (so a ddpm run can be split where its ambient twin is). A
    field missing from a run saved before it existed reads as its default (no gate)."""
    return branch_boundary(
        float(loss.sigma_tn),
        loss.get("sigma_switch", 0.0),
        loss.get("switch_ratio", 1.0),
        loss.get("switch_offset", 0.0),
    )


def gate_ratio(s_max: float) -> float:
    """Ambient Omni's gate as a switch_ratio: an image at sigma_tn trains its ambient rows only at
    sigma >= sigma_tn sqrt(1 + 1 / (s_max - 1)), where sigma^2 / (sigma^2 - sigma_tn^2) <= s_max,
    so the rescaled weight's factor stays under s_max^2 (1.1547 at the group's s_max = 4)."""
    return (1 + 1 / (s_max - 1)) ** 0.5


def check_config(loss: Config, level_floor: float = 0.0) -> None:
    """config.loss values the objective cannot train with, each named (ValueError): the one check
    of these settings, run at config time (config.check_config) and by objective.make_objective
    on its arguments. level_floor: finetune.train_above (0 = every level)."""
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
            ("ambient_fraction", lambda v: 0 <= v < 1, "must lie in [0, 1) (0 = the log-normal)"),
            ("p_mean", lambda v: abs(v) < 1e3, "must be a finite log-sigma"),
            ("p_std", lambda v: v > 0, "must be > 0"),
            ("rescale_cap", lambda v: v >= 0, "must be >= 0 (0 = off)"),
            ("sigma_data", lambda v: v > 0, "must be > 0"),
            ("sigma_switch", lambda v: v >= 0, "must be >= 0 (0 = sigma_tn)"),
            ("switch_ratio", lambda v: v >= 1, "must be >= 1 (1 = no gate)"),
            ("switch_offset", lambda v: v >= 0, "must be >= 0"),
        ),
    )
    sigma_tn = effective_sigma_tn(loss.objective, loss.sigma_tn)
    need(
        not loss.sigma_switch or loss.sigma_switch >= sigma_tn,
        "loss.sigma_switch",
        f"must be 0 (= loss.sigma_tn) or >= loss.sigma_tn = {sigma_tn}, got {loss.sigma_switch}",
    )
    if loss.branch_rule == "lecture":
        lecture_free = (
            not loss.sigma_switch
            and not loss.rescale_cap
            and not loss.ambient_fraction
            and loss.switch_ratio == 1
            and not loss.switch_offset
        )
        need(
            lecture_free,
            "loss.branch_rule",
            "lecture draws its branches by Algorithm 1: loss.sigma_switch, loss.rescale_cap, "
            "loss.ambient_fraction, loss.switch_ratio and loss.switch_offset belong to "
            "branch_rule=paper",
        )
    need(level_floor >= 0, "finetune.train_above", "must be >= 0 (0 = every level)")
    need(
        not level_floor or (loss.branch_rule == "paper" and not loss.ambient_fraction),
        "finetune.train_above",
        "draws each row's level above it from the log-normal: needs loss.branch_rule=paper "
        "and loss.ambient_fraction=0",
    )
