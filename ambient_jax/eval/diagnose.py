"""Per-noise-level diagnosis: where in sigma a trained denoiser generalizes and where it copies.

For a log-spaced grid of noise levels sigma and the run's EMA denoiser D, with x = x0 + sigma n:

  * denoising error on training and on held-out images, per pixel,
        err_S(sigma) = E_{x0 in S} ||D(x, sigma) - x0||^2 / d,   err_H likewise on held-out x0;
    the gap err_H - err_S is the generalization gap at that noise level;
  * distance to the memorizing optimum, per pixel, on held-out inputs,
        mem_S(sigma) = E ||D(x, sigma) - D*_S(x, sigma)||^2 / d,
    where D*_S is the exact minimiser of the denoising loss over the finite training set S, the
    posterior mean under the empirical distribution (Karras et al. 2022, appendix B.3; the
    lecture's section 3):
        D*_S(x, sigma) = sum_i softmax_i(-||x - x_i||^2 / (2 sigma^2)) x_i;
    a denoiser that copies follows D*_S, which snaps every input to a training image;
  * for ambient runs, above sigma_tn, the distance to the exact minimiser of the ambient loss over
    the noisy copies S_tn = {x_tn_i} (one per image, as trained):
        D*_tn(x, sigma) = (sigma^2 E_tn[x_tn | x] - sigma_tn^2 x) / (sigma^2 - sigma_tn^2),
        E_tn[x_tn | x]  = sum_i softmax_i(-||x - x_tn_i||^2 / (2 (sigma^2 - sigma_tn^2))) x_tn_i,
    the denoiser that memorizes the noisy copies (x_tn_hat = E_tn[x_tn | x] minimises
    ||x_tn_hat - x_tn||^2, and D is that x_tn_hat solved for).

  * the globality of D: how much its output on the central patch P (R/4 x R/4 pixels of an R x R
    image) depends on the pixels farther than R/8 from P, i.e. outside the central R/2 x R/2
    window (three quarters of the image), on pairs of held-out inputs x_a, x_b and the chimera c
    that is x_a within the window and x_b outside it,
        G(sigma) = E ||D(c)_P - D(x_a)_P||^2 / E ||D(x_b)_P - D(x_a)_P||^2;
    0 when P is decided by its neighbourhood alone (a local denoiser, as the paper's premise needs
    at low noise), about 1 when the far pixels move it as much as a whole other image does; the
    same for D*_S as the reference (a denoiser that copies is global wherever it snaps);

  * the effective number of training images the exact denoiser averages at each level,
    n_eff(sigma) = E 1 / sum_i w_i^2 with w = the softmax above, on held-out inputs: a property of
    the data alone. Where n_eff is near 1, a denoiser that copies snaps every input to one training
    image: the branch boundary sigma_tn of the ambient objective has to lie above that region for
    a well-trained clean branch not to decide the sample's identity.

The softmax is computed in blocks of reference images with a running log-sum-exp, so no
[queries x references] matrix larger than one block is held.
"""

import functools
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax import checkpoint, files, plots
from ambient_jax import config as config_lib
from ambient_jax.data import load_split
from ambient_jax.diffusion import losses, precond
from ambient_jax.diffusion.precond import Denoiser, network_denoiser
from ambient_jax.eval import report

DEFAULT_NUM_LEVELS = 24


def sigma_grid(
    num_levels: int = DEFAULT_NUM_LEVELS, sigma_min: float = 0.002, sigma_max: float = 80.0
) -> np.ndarray:
    """num_levels noise levels, log-spaced from sigma_min to sigma_max (the sampler's range)."""
    return np.geomspace(sigma_min, sigma_max, num_levels)


def posterior_mean(
    x: jax.Array, refs: jax.Array, variance: jax.Array, ref_block: int | None = None
) -> jax.Array:
    """sum_i softmax_i(-||x - r_i||^2 / (2 variance)) r_i for each row of x.

    x [B, ...], refs [N, ...] (same trailing shape), variance [B] > 0. With ref_block set, the
    references are visited in blocks of that many with a running log-sum-exp (the result is the
    same as the one-block computation up to float rounding).
    """
    xf = x.reshape(x.shape[0], -1)
    rf = refs.reshape(refs.shape[0], -1)
    scale = 1.0 / (2.0 * variance)[:, None]

    def logits(block):
        d2 = jnp.sum(xf**2, 1)[:, None] - 2 * xf @ block.T + jnp.sum(block**2, 1)[None, :]
        return -d2 * scale

    if ref_block is None or ref_block >= rf.shape[0]:
        w = jax.nn.softmax(logits(rf), axis=-1)
        return (w @ rf).reshape(x.shape)
    blocks = -(-rf.shape[0] // ref_block)
    padded = jnp.zeros((blocks * ref_block, rf.shape[1]), rf.dtype).at[: rf.shape[0]].set(rf)
    valid = (jnp.arange(blocks * ref_block) < rf.shape[0]).reshape(blocks, ref_block)

    def visit(carry, xs):
        top, total, acc = carry
        block, ok = xs
        lg = jnp.where(ok[None, :], logits(block), -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(lg, axis=1))
        rescale = jnp.exp(top - new_top)
        w = jnp.exp(lg - new_top[:, None])
        return (new_top, total * rescale + jnp.sum(w, 1), acc * rescale[:, None] + w @ block), None

    start = (
        jnp.full((xf.shape[0],), -jnp.inf, xf.dtype),
        jnp.zeros((xf.shape[0],), xf.dtype),
        jnp.zeros_like(xf),
    )
    (_, total, acc), _ = jax.lax.scan(visit, start, (padded.reshape(blocks, ref_block, -1), valid))
    return (acc / total[:, None]).reshape(x.shape)


def effective_references(
    x: jax.Array, refs: jax.Array, variance: jax.Array, ref_block: int = 1024
) -> jax.Array:
    """1 / sum_i w_i^2 of the softmax weights w of posterior_mean, per row of x: from 1 (one
    reference dominates) to len(refs) (all weigh the same). Log-sum-exps combined over blocks."""
    xf = x.reshape(x.shape[0], -1)
    rf = refs.reshape(refs.shape[0], -1)
    lse1 = lse2 = jnp.full((xf.shape[0],), -jnp.inf, xf.dtype)
    for first in range(0, rf.shape[0], ref_block):
        block = rf[first : first + ref_block]
        d2 = jnp.sum(xf**2, 1)[:, None] - 2 * xf @ block.T + jnp.sum(block**2, 1)[None, :]
        lg = -d2 / (2.0 * variance)[:, None]
        lse1 = jnp.logaddexp(lse1, jax.nn.logsumexp(lg, axis=1))
        lse2 = jnp.logaddexp(lse2, jax.nn.logsumexp(2 * lg, axis=1))
    return jnp.exp(2 * lse1 - lse2)


def memorizing_denoiser(train: jax.Array, ref_block: int | None = None) -> Denoiser:
    """D*_S(x, sigma): the exact minimiser of the denoising loss over the training images."""
    return lambda x, sigma: posterior_mean(x, train, sigma**2, ref_block)


def noisy_copy_denoiser(
    noisy_copies: jax.Array, sigma_tn: float, ref_block: int | None = None
) -> Denoiser:
    """D*_tn(x, sigma), sigma > sigma_tn: the exact minimiser of the ambient loss over S_tn."""

    def denoise(x, sigma):
        gap = sigma**2 - sigma_tn**2
        expected = posterior_mean(x, noisy_copies, gap, ref_block)
        expand = lambda a: a.reshape(-1, *([1] * (x.ndim - 1)))
        return (expand(sigma**2) * expected - sigma_tn**2 * x) / expand(gap)

    return denoise


def _per_pixel_sq(a, b):
    return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=1)


@functools.partial(jax.jit, static_argnames=("denoise", "references"))
def _level_errors(denoise, references, x0, noise, sigma):
    """Per-row error to x0 and distance to each reference denoiser at one noise level."""
    s = jnp.full((x0.shape[0],), sigma, x0.dtype)
    x = x0 + sigma * noise
    d = denoise(x, s)
    return _per_pixel_sq(d, x0), tuple(_per_pixel_sq(d, ref(x, s)) for ref in references)


def level_noise(level_key: jax.Array, first: int, count: int, shape: tuple) -> jax.Array:
    """N(0, I) of `shape` for images first .. first + count - 1 at one level: image j's noise is
    drawn from fold_in(level_key, j), so it does not depend on how the images are batched."""
    draw = lambda j: jax.random.normal(jax.random.fold_in(level_key, j), shape)
    return jax.vmap(draw)(jnp.arange(first, first + count, dtype=jnp.uint32))


def denoising_errors(
    denoise: Denoiser,
    images: np.ndarray | jax.Array,
    sigmas: np.ndarray,
    key: jax.Array,
    batch_size: int = 256,
    references: tuple = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Per level: mean per-pixel ||D(x0 + sigma n) - x0||^2 over `images`, and the mean per-pixel
    distance of D to each reference denoiser on the same inputs. Returns (err [L], dists [R, L]).

    The noise for image j at level l is drawn from fold_in(fold_in(key, l), j), so two denoisers
    evaluated with the same key see exactly the same noisy inputs.
    """
    images = jnp.asarray(images, jnp.float32)
    err = np.zeros(len(sigmas))
    dist = np.zeros((len(references), len(sigmas)))
    n = images.shape[0]
    for level, sigma in enumerate(sigmas):
        level_key = jax.random.fold_in(key, level)
        for first in range(0, n, batch_size):
            x0 = images[first : first + batch_size]
            noise = level_noise(level_key, first, x0.shape[0], x0.shape[1:])
            e, ds = _level_errors(denoise, tuple(references), x0, noise, float(sigma))
            err[level] += float(jnp.sum(e))
            for r, d in enumerate(ds):
                dist[r, level] += float(jnp.sum(d))
    return err / n, dist / n


def _window_mask(shape, patch, margin):
    """(patch mask, window mask) [H, W, 1]: the central patch x patch pixels, and the pixels
    within `margin` of it."""
    height, width = shape[:2]
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    top, left = (height - patch) // 2, (width - patch) // 2
    inside = lambda lo, hi: (rows >= top + lo) & (rows < top + patch + hi)
    across = lambda lo, hi: (cols >= left + lo) & (cols < left + patch + hi)
    return (inside(0, 0) & across(0, 0))[..., None], (
        inside(-margin, margin) & across(-margin, margin)
    )[..., None]


@functools.partial(jax.jit, static_argnames=("denoise",))
def _patch_changes(denoise, x_a, x_b, patch, window, sigma):
    """Summed squared change of D on the patch: chimera vs x_a, and x_b vs x_a."""
    s = jnp.full((x_a.shape[0],), sigma, x_a.dtype)
    d_a = denoise(x_a, s)
    change = lambda x: jnp.sum(jnp.square((denoise(x, s) - d_a) * patch))
    return change(jnp.where(window, x_a, x_b)), change(x_b)


def globality(
    denoise: Denoiser,
    images: np.ndarray | jax.Array,
    sigmas: np.ndarray,
    key: jax.Array,
    patch: int | None = None,
    margin: int | None = None,
    batch_size: int = 256,
) -> list[float]:
    """G(sigma) of the module docstring on the pairs (images[j], images[j + 1 mod N]), each with
    its own noise (image j's noise at level l from fold_in(fold_in(key, l), j)); patch and margin
    default to R/4 and R/8 pixels."""
    images = jnp.asarray(images, jnp.float32)
    patch = patch or max(1, images.shape[1] // 4)
    margin = margin or max(1, images.shape[1] // 8)
    patch_mask, window = (jnp.asarray(m) for m in _window_mask(images.shape[1:], patch, margin))
    out = []
    for level, sigma in enumerate(sigmas):
        level_key = jax.random.fold_in(key, level)
        x = images + float(sigma) * level_noise(level_key, 0, images.shape[0], images.shape[1:])
        others = jnp.roll(x, -1, axis=0)
        far = whole = 0.0
        for first in range(0, x.shape[0], batch_size):
            rows = slice(first, first + batch_size)
            f, w = _patch_changes(denoise, x[rows], others[rows], patch_mask, window, float(sigma))
            far, whole = far + float(f), whole + float(w)
        out.append(far / whole)
    return out


def diagnose(
    denoise: Denoiser,
    train: np.ndarray,
    heldout: np.ndarray,
    sigmas: np.ndarray,
    key: jax.Array,
    noisy_copies: np.ndarray | jax.Array | None = None,
    sigma_tn: float = 0.0,
    batch_size: int = 256,
    ref_block: int = 1024,
    reference_train: np.ndarray | None = None,
) -> dict:
    """The per-level curves of one denoiser (see the module docstring), as a dict of lists.

    train [N, H, W, C] are the training images whose denoising error is measured, heldout
    [M, H, W, C] images never trained on, noisy_copies the ambient run's S_tn (None for ddpm), and
    reference_train the whole training set that defines D*_S (default: train).
    """
    reference_train = train if reference_train is None else reference_train
    memorizing = memorizing_denoiser(jnp.asarray(reference_train), ref_block)
    err_train, _ = denoising_errors(denoise, train, sigmas, jax.random.fold_in(key, 0), batch_size)
    refs: tuple[Denoiser, ...] = (memorizing,)
    if noisy_copies is not None and sigma_tn > 0:
        refs = refs + (noisy_copy_denoiser(jnp.asarray(noisy_copies), sigma_tn, ref_block),)
    err_heldout, dists = denoising_errors(
        denoise, heldout, sigmas, jax.random.fold_in(key, 1), batch_size, refs
    )
    n_eff = []
    held = jnp.asarray(heldout, jnp.float32)
    for level, sigma in enumerate(sigmas):  # the same noisy held-out inputs as above
        level_key = jax.random.fold_in(jax.random.fold_in(key, 1), level)
        x = held + float(sigma) * level_noise(level_key, 0, held.shape[0], held.shape[1:])
        n_eff.append(
            float(
                jnp.mean(
                    effective_references(
                        x, jnp.asarray(reference_train), jnp.full((x.shape[0],), sigma**2)
                    )
                )
            )
        )
    far_key = jax.random.fold_in(key, 2)
    out = {
        "globality": globality(denoise, heldout, sigmas, far_key),
        "globality_memorizing": globality(memorizing, heldout, sigmas, far_key),
        "sigma": [float(s) for s in sigmas],
        "err_train": err_train.tolist(),
        "err_heldout": err_heldout.tolist(),
        "gap": (err_heldout - err_train).tolist(),
        "dist_memorizing": dists[0].tolist(),
        "effective_train_images": n_eff,
        "sigma_tn": float(sigma_tn),
        "num_train": int(len(train)),
        "num_heldout": int(len(heldout)),
    }
    if len(refs) > 1:  # D*_tn is defined above sigma_tn only
        out["dist_noisy_copies"] = [
            float(d) if s > sigma_tn else None for d, s in zip(dists[1], sigmas)
        ]
    return out


# ----------------------------------------------------------------------------- runs


def diagnose_run(
    workdir: str,
    num_levels: int = DEFAULT_NUM_LEVELS,
    max_images: int = 500,
    seed: int = 0,
    log: Callable[[str], None] = print,
    batch_size: int = 256,
) -> dict:
    """Diagnose the run in `workdir` with its EMA parameters; returns the curves (not written).
    batch_size: images denoised at once (lower it when the device runs out of memory)."""
    config, model, params = checkpoint.load_ema_params(workdir)
    if config.model.overrides.get("label_dim"):
        raise ValueError(
            f"{workdir}: a class-conditional network (model.overrides.label_dim > 0); the "
            "diagnosis does not pass class labels yet"
        )
    split = load_split(config.data)
    if len(split.heldout) < 2:
        raise ValueError(
            f"the diagnosis compares the denoiser on training and held-out images, but the run "
            f"trains on {len(split.train)} of the source's "
            f"{len(split.train) + len(split.heldout)} images and holds out "
            f"{len(split.heldout)}: diagnose a run with data.n_train below the source's size"
        )
    heldout = split.heldout[
        np.random.RandomState(seed).permutation(len(split.heldout))[:max_images]
    ]
    train_images = split.train
    sigma_tn = config_lib.effective_sigma_tn(config)
    copies = None
    if sigma_tn > 0 and not config_lib.noise_keyed_by_source(workdir):
        log(f"{workdir}: trained before noisy copies were keyed by source index; no D*_tn curve")
    elif sigma_tn > 0:
        copies = losses.noisy_training_copies(config.loss, train_images, split.train_indices)
    # The reference sets stay whole; only the queries are subsampled.
    if len(train_images) > max_images:
        queries = train_images[
            np.random.RandomState(seed).permutation(len(train_images))[:max_images]
        ]
    else:
        queries = train_images
    denoise = network_denoiser(model, params, precond.from_config(config))
    sigmas = sigma_grid(num_levels)  # the EDM sampler's range, 0.002 to 80
    key = jax.random.key(seed)
    log(
        f"diagnosing {workdir}: {num_levels} noise levels, {len(queries)} training / "
        f"{len(heldout)} held-out images"
    )
    result = diagnose(
        denoise, queries, heldout, sigmas, key, copies, sigma_tn, batch_size,
        reference_train=train_images,
    )  # fmt: skip
    result["workdir"] = files.absolute(workdir)
    result["label"] = report.run_label(workdir, config_lib.effective_sigma_tn(config))
    return result


def markdown_table(result: dict) -> str:
    """One row per noise level."""
    has_tn = "dist_noisy_copies" in result
    head = "| sigma | n_eff | err train | err held-out | gap | dist to D*_S |" + (
        " dist to D*_tn |" if has_tn else ""
    )
    has_g = "globality" in result
    head += " globality D / D*_S |" if has_g else ""
    lines = [head, "|---" * (6 + has_tn + has_g) + "|"]
    for i, s in enumerate(result["sigma"]):
        row = (
            f"| {s:.4g} | {result['effective_train_images'][i]:.3g} | "
            f"{result['err_train'][i]:.4g} | "
            f"{result['err_heldout'][i]:.4g} | {result['gap'][i]:.3g} | "
            f"{result['dist_memorizing'][i]:.4g} |"
        )
        if has_tn:
            d = result["dist_noisy_copies"][i]
            row += " - |" if d is None else f" {d:.4g} |"
        if has_g:
            row += f" {result['globality'][i]:.3g} / {result['globality_memorizing'][i]:.3g} |"
        lines.append(row)
    note = (
        "\nn_eff: the effective number of training images the exact denoiser averages (1 = it "
        "snaps to one). "
        "Per-pixel mean squared values; data in [-1, 1]. err: ||D(x0 + sigma n) - x0||^2 on "
        "training / held-out "
        "images; gap = held-out - train; D*_S: the exact denoiser of the training set (copies); "
        "D*_tn: the exact "
        "minimiser of the ambient loss over the noisy copies (memorizes them). globality: how much "
        "the output on the central R/4 x R/4 patch moves when the pixels outside the central "
        "R/2 x R/2 window come from another image, relative to a whole other image (0 = local).\n"
    )
    return "\n".join(lines) + "\n" + note


def summary_table(results: list[dict]) -> str:
    """Several runs side by side: per level, each run's generalization gap and distance to D*_S."""
    head = "| sigma | " + " | ".join(f"{r['label']}: gap / dist D*_S" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for i, s in enumerate(results[0]["sigma"]):
        cells = [f"{r['gap'][i]:.3g} / {r['dist_memorizing'][i]:.3g}" for r in results]
        lines.append(f"| {s:.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_diagnosis(workdir: str, results: list[dict], log: Callable[[str], None] = print) -> None:
    """Write eval/diagnose.json, diagnose.md and diagnose.png (all `results` as curves) into
    workdir."""
    out = os.path.join(workdir, report.EVAL_DIR)
    files.makedirs(out)
    own = next(r for r in results if r["workdir"] == files.absolute(workdir))
    files.write_text_atomic(os.path.join(out, "diagnose.json"), json.dumps(own, indent=1))
    files.write_text_atomic(
        os.path.join(out, "diagnose.md"),
        f"# Per-noise-level diagnosis: {own['label']}\n\n" + markdown_table(own),
    )
    plots.save_diagnosis(results, os.path.join(out, "diagnose.png"))
    log(f"wrote {out}/diagnose.md and diagnose.png")
