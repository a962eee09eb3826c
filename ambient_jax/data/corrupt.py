"""Corrupted training images for data of mixed quality (Daras et al. 2025, Ambient Diffusion Omni):
a few clean images and many poor ones, each poor one with the noise level sigma_tn above which
its corruption no longer matters.

The recipe for the embedded digits: besides the clean training subset, `count` other source
images, chosen by a seed among those outside it (so that `keep_heldout` images stay held out for
evaluation), are either noised (additive Gaussian noise of std `level` in the [-1, 1] pixel
scale: their sigma_tn is `level`, known) or blurred (a Gaussian of std `level` pixels: not
additive noise, so their sigma_tn has to be estimated). The noise of image i is keyed by
(seed, its source index), so a corrupted image is the same in every run.

Omni's other kind of image is whole but out of distribution: right in its details, wrong as a
whole. Kind "classes" takes them, unchanged, from the embedded digits of other classes
(`data.corrupt_classes`, e.g. 5-9 beside a target of 0-4 in `data.classes`): they are not part of
the target's source, so they leave its held-out set whole, and their source index is the target
source's size plus their position among those digits (distinct keys for their noisy copies).
Such an image trains only below its sigma_max (`data.corrupt_sigma_max`), where a denoiser looks
at a neighbourhood too small to tell it from a target image; any image may have both bounds.
"""

import json
from typing import Sequence

import numpy as np

from ambient_jax import files
from ambient_jax.checks import need, need_each
from ambient_jax.data.images import DataError, to_unit_range
from ambient_jax.data.sources import load_mnist
from ambient_jax.types import Config

KINDS = ("noise", "blur", "classes")
RECORD_NAME = "corrupted.json"


def gaussian_kernel(width: float) -> np.ndarray:
    """The normalised 1-d Gaussian of std `width` pixels, radius ceil(3 width)."""
    radius = max(1, int(np.ceil(3 * width)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / width) ** 2)
    return taps / taps.sum()


def gaussian_blur(images: np.ndarray, width: float) -> np.ndarray:
    """[N, H, W, C] blurred by a Gaussian of std `width` pixels (separable, edges reflected)."""
    if width <= 0:
        return np.array(images, np.float32)
    kernel = gaussian_kernel(width)
    radius = len(kernel) // 2
    out = np.asarray(images, np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        size = out.shape[axis]
        out = sum(
            k * np.take(padded, np.arange(i, i + size), axis=axis) for i, k in enumerate(kernel)
        )
    return out.astype(np.float32)


def image_noise(seed: int, source_indices: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, I) of `shape` for each source index, keyed by (seed, index)."""
    return np.stack(
        [np.random.RandomState([seed, int(i)]).randn(*shape) for i in source_indices]
    ).astype(np.float32)


def corrupt(
    images: np.ndarray, source_indices: np.ndarray, kind: str, level: float, seed: int
) -> np.ndarray:
    """The corrupted versions of `images` (source indices given, for their noise keys)."""
    if kind not in KINDS[:2]:
        raise DataError(f"data.corrupt_kind must be 'noise' or 'blur' to corrupt, got {kind!r}")
    if level <= 0:
        raise DataError(f"data.corrupt_level must be > 0, got {level}")
    if kind == "noise":
        return images + level * image_noise(seed, source_indices, images.shape[1:])
    return gaussian_blur(images, level)


def choose_corrupted(
    num_images: int, train_indices: np.ndarray, count: int, keep_heldout: int, seed: int
) -> np.ndarray:
    """Sorted source indices of `count` images outside the training subset, chosen by `seed`,
    leaving at least `keep_heldout` images held out."""
    others = np.setdiff1d(np.arange(num_images), train_indices)
    if count > len(others) - keep_heldout:
        raise DataError(
            f"data.corrupt_count = {count} leaves fewer than {keep_heldout} of the source's "
            f"{len(others)} images outside the training subset held out: lower it to at most "
            f"{max(len(others) - keep_heldout, 0)}"
        )
    return np.sort(np.random.RandomState(seed).permutation(others)[:count])


def corrupted_subset(
    data_config: Config, images: np.ndarray, train_indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(the corrupted images [M, H, W, C], their sorted source indices [M]) of the data config's
    recipe (data.corrupt_*), from the source's `images`; M = 0 when data.corrupt_count is 0."""
    count = int(data_config.get("corrupt_count", 0))
    if not count:
        return images[:0], np.zeros(0, np.int64)
    if data_config.corrupt_kind == "classes":
        return other_class_images(data_config, count, len(images))
    chosen = choose_corrupted(
        len(images),
        train_indices,
        count,
        int(data_config.corrupt_keep_heldout),
        int(data_config.corrupt_seed),
    )
    kind, level = data_config.corrupt_kind, float(data_config.corrupt_level)
    return corrupt(images[chosen], chosen, kind, level, int(data_config.corrupt_seed)), chosen


def other_class_images(
    data_config: Config, count: int, num_target: int
) -> tuple[np.ndarray, np.ndarray]:
    """(`count` digits of data.corrupt_classes chosen by data.corrupt_seed, unchanged, in [-1, 1];
    their source indices num_target + position among those digits, sorted)."""
    digits, labels = load_mnist(data_config.resolution)
    pool = digits[np.isin(labels, tuple(data_config.corrupt_classes))]
    if count > len(pool):
        raise DataError(
            f"data.corrupt_count = {count} but the embedded digits of classes "
            f"{tuple(data_config.corrupt_classes)} are only {len(pool)}: lower it to at most "
            f"{len(pool)}"
        )
    seed = int(data_config.corrupt_seed)
    chosen = np.sort(np.random.RandomState(seed).permutation(len(pool))[:count])
    return to_unit_range(pool[chosen]), num_target + chosen


def annotation_values(
    data_config: Config, source_indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigma_tn [M], clean [M], copy_noise [M]) of the corrupted images, from
    data.corrupt_sigma_tn: "known" = the additive noise's level (noise recipe only); "clean" =
    used as if clean (sigma_tn 0, plain denoising at every level); a number = one fixed sigma_tn
    for every corrupted image; otherwise the path of an annotation file (ambient-annotate) with a
    value per source index. ("unused": the images are chosen and kept out of the held-out set but
    do not train: the clean-only control of an experiment, evaluated against the same held-out
    images.)

    copy_noise: the std of the image's fixed noise that makes its noisy observation x_tn =
    image + copy_noise eps_i. The ambient loss takes x_tn to be x0 + sigma_tn n and adds only
    sqrt(sigma^2 - sigma_tn^2) more, so x_tn must carry sigma_tn of noise: an image noised at the
    known level already does (0 added); a blurred image, or one annotated above its noise, gets
    sigma_tn added, as the group's training loop does (x_tn = x0 + noise * sigma_tn, the noise
    fixed per image). Without it the network sees less noise than its level says (measured: a
    fixed sigma_tn 2.0 on blurred digits gave a held-out error of 2.9 per pixel at sigma 3.2,
    against 0.15 for the clean-only run)."""
    spec = str(data_config.corrupt_sigma_tn).strip()
    n = len(source_indices)
    if spec == "unused":
        raise DataError("data.corrupt_sigma_tn=unused: the corrupted images do not train")
    if spec == "clean":
        return np.zeros(n, np.float32), np.ones(n, bool), np.zeros(n, np.float32)
    if spec == "known":
        if data_config.corrupt_kind != "noise":
            raise DataError(
                f"data.corrupt_sigma_tn=known: a {data_config.corrupt_kind} corruption is not "
                "additive noise, its sigma_tn is not known; give one number (a fixed annotation) "
                "or the file written by ambient-annotate"
            )
        level = np.full(n, float(data_config.corrupt_level), np.float32)
        return level, np.zeros(n, bool), np.zeros(n, np.float32)
    fixed = parse_level(spec)
    if fixed is not None:
        level = np.full(n, fixed, np.float32)
        return level, np.zeros(n, bool), level
    by_index = read_annotation(spec)
    missing = [int(i) for i in source_indices if int(i) not in by_index]
    if missing:
        raise DataError(
            f"{spec} has no sigma_tn for {len(missing)} of the {n} corrupted images (source "
            f"index {missing[0]} first): it was written for another recipe; run ambient-annotate "
            "again with this data config"
        )
    level = np.array([by_index[int(i)] for i in source_indices], np.float32)
    return level, np.zeros(n, bool), level


def parse_level(spec: str) -> float | None:
    """A number in data.corrupt_sigma_tn (a fixed annotation), else None."""
    try:
        return float(spec)
    except ValueError:
        return None


def check_sigma_tn_spec(spec: str, kind: str) -> str | None:
    """The error message for a data.corrupt_sigma_tn that cannot work, or None."""
    spec = str(spec).strip()
    if spec in ("clean", "unused") or (spec == "known" and kind == "noise"):
        return None
    if spec == "known":
        return f"is 'known', which only an additive noise has (data.corrupt_kind={kind!r})"
    return _number_or_file(
        spec, "fixed annotation", "'known', 'clean', 'unused'", "ambient-annotate"
    )


def _number_or_file(spec: str, number: str, words: str, writer: str) -> str | None:
    """The rule both level specs share past their words: a number must be finite and > 0, anything
    else must name an annotation file (.json)."""
    level = parse_level(spec)
    if level is not None:
        good = np.isfinite(level) and level > 0
        return None if good else f"must be > 0 and finite as a {number}, got {level}"
    if not spec.endswith(".json"):
        return (
            f"must be {words}, a number > 0 or an annotation file (.json) from {writer}, "
            f"got {spec!r}"
        )
    return None


def write_annotation(
    path: str,
    data_config: Config,
    source_indices: np.ndarray,
    values: Sequence[float] | np.ndarray,
    how: dict,
    key: str = "sigma_tn",
) -> dict:
    """The annotation file: a value per source image under `key` ("sigma_tn", or "sigma_max"
    where an unbounded image has no entry), with the recipe it was made for and how the values
    were chosen."""
    record = {
        "recipe": recipe(data_config),
        "how": how,
        key: {
            str(int(i)): round(float(s), 6)
            for i, s in zip(source_indices, values)
            if np.isfinite(s)
        },
    }
    files.write_json_atomic(path, record)
    return record


def read_annotation(path: str, key: str = "sigma_tn") -> dict[int, float]:
    """{source index: value} of an ambient-annotate file's `key` ("sigma_tn" or "sigma_max"),
    every value checked as a number in the config is: finite and > 0."""
    field = f"data.corrupt_{key}"
    if not files.exists(path):
        raise DataError(
            f"{field}: the annotation file {path} does not exist; write it with ambient-annotate "
            + ("or give 'known', 'clean' or a number" if key == "sigma_tn" else "or give a number")
        )
    try:
        record = files.read_json(path)
        if key not in record:
            held = [k for k in ("sigma_tn", "sigma_max") if k in record]
            raise DataError(
                f"{field}={path}: the file holds no {key} values"
                + (f" (it annotates {held[0]})" if held else "")
                + f"; write one with ambient-annotate --annotate={key}"
            )
        values = {int(i): float(s) for i, s in record[key].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(
            f"{path} is not an annotation file of ambient-annotate ({error}); write it again"
        ) from None
    # the rule a number in data.corrupt_sigma_tn obeys (check_sigma_tn_spec), for each entry
    bad = next(((i, v) for i, v in values.items() if not (np.isfinite(v) and v > 0)), None)
    if bad is not None:
        raise DataError(
            f"{path}: {key} of source index {bad[0]} is {bad[1]}; every {key} must be a "
            "finite number > 0 (an image without a bound has no entry): write the file again "
            "with ambient-annotate"
        )
    return values


def window_tops(data_config: Config, source_indices: np.ndarray) -> np.ndarray:
    """sigma_max [M] of the other images, from data.corrupt_sigma_max: "none" = no upper bound
    (inf), a number = one for all, else an annotation file (ambient-annotate
    --annotate=sigma_max) with a value per source index (an index without one: no bound)."""
    spec = str(data_config.get("corrupt_sigma_max", "none")).strip()
    n = len(source_indices)
    if spec == "none":
        return np.full(n, np.inf, np.float32)
    fixed = parse_level(spec)
    if fixed is not None:
        return np.full(n, fixed, np.float32)
    by_index = read_annotation(spec, "sigma_max")
    return np.array([by_index.get(int(i), np.inf) for i in source_indices], np.float32)


def check_sigma_max_spec(spec: str) -> str | None:
    """The error message for a data.corrupt_sigma_max that cannot work, or None."""
    spec = str(spec).strip()
    if spec == "none":
        return None
    return _number_or_file(
        spec, "fixed sigma_max", "'none'", "ambient-annotate --annotate=sigma_max"
    )


def recipe(data_config: Config) -> dict:
    return {
        name: data_config[name]
        for name in (
            "source",
            "n_train",
            "subset_seed",
            "corrupt_kind",
            "corrupt_level",
            "corrupt_count",
            "corrupt_seed",
            "corrupt_keep_heldout",
            "corrupt_classes",
        )
        if name in data_config
    }


def record_corrupted(
    workdir: str,
    data_config: Config,
    source_indices: np.ndarray,
    sigma_tn: np.ndarray,
    clean: np.ndarray,
    copy_noise: np.ndarray,
    sigma_max: np.ndarray | None = None,
) -> dict:
    """`corrupted.json` in the work dir, beside subset.json: which source images trained as
    corrupted, with what sigma_tn (and sigma_max: null where unbounded)."""
    record = {
        "recipe": recipe(data_config),
        "sigma_tn_from": str(data_config.corrupt_sigma_tn),
        "source_indices": [int(i) for i in source_indices],
        "sigma_tn": [round(float(s), 6) for s in sigma_tn],
        "used_as_clean": [bool(c) for c in clean],
        "noise_added_to_make_x_tn": [round(float(s), 6) for s in copy_noise],
        "sigma_max_from": str(data_config.get("corrupt_sigma_max", "none")),
        "sigma_max": [
            round(float(s), 6) if np.isfinite(s) else None
            for s in (np.full(len(sigma_tn), np.inf) if sigma_max is None else sigma_max)
        ],
    }
    files.write_json_atomic(f"{workdir}/{RECORD_NAME}", record)
    return record


def check_config(data: Config, loss: Config) -> None:
    """config.data's corruption fields (and what data of mixed quality asks of config.loss),
    each named (ValueError)."""
    need_each(
        "data",
        data,
        (
            ("corrupt_count", lambda v: v >= 0, "must be >= 0 (0 = no corrupted images)"),
            ("corrupt_keep_heldout", lambda v: v >= 0, "must be >= 0"),
        ),
    )
    if not int(data.corrupt_count):
        return
    need(data.corrupt_kind in KINDS, "data.corrupt_kind", f"must be one of {KINDS}")
    need(data.corrupt_level > 0, "data.corrupt_level", "must be > 0")
    says = check_sigma_max_spec(data.corrupt_sigma_max)
    need(says is None, "data.corrupt_sigma_max", says or "")
    share = data.bounded_share
    need(
        share == -1.0 or 0.0 < share < 1.0,
        "data.bounded_share",
        f"must be in (0, 1), or -1 for the images' own share, got {share:g}",
    )
    need(
        share == -1.0 or data.corrupt_sampling == "level_first",
        "data.bounded_share",
        "shares the rows of a level, so it needs data.corrupt_sampling=level_first",
    )
    need(
        share == -1.0 or str(data.corrupt_sigma_max).strip() != "none",
        "data.bounded_share",
        "shares a level's rows with the images that have a sigma_max: set "
        "data.corrupt_sigma_max, or leave data.bounded_share at -1",
    )
    if data.corrupt_kind == "classes":
        others, target = tuple(data.corrupt_classes), tuple(data.classes)
        need(
            data.source == "mnist",
            "data.corrupt_kind",
            "'classes' takes digits of other classes from the embedded mnist source",
        )
        need(
            bool(others) and all(isinstance(c, int) and 0 <= c <= 9 for c in others),
            "data.corrupt_classes",
            f"must name the other digits (0-9) for data.corrupt_kind=classes, got {others}",
        )
        need(
            bool(target) and not set(target) & set(others),
            "data.classes",
            f"must name the target's digits, none of data.corrupt_classes {others}, for "
            f"data.corrupt_kind=classes (got {target})",
        )
    says = check_sigma_tn_spec(data.corrupt_sigma_tn, data.corrupt_kind)
    need(says is None, "data.corrupt_sigma_tn", says or "")
    need(
        data.corrupt_sampling in ("level_first", "image_first"),
        "data.corrupt_sampling",
        "must be 'level_first' or 'image_first'",
    )
    need(
        loss.branch_rule == "paper",
        "data.corrupt_count",
        "per-image sigma_tn belongs to loss.branch_rule=paper",
    )
    need(
        not loss.sigma_switch and not loss.ambient_fraction,
        "data.corrupt_count",
        "with per-image sigma_tn the ambient branch begins at each image's sigma_tn * "
        "loss.switch_ratio + loss.switch_offset: set loss.sigma_switch=0 and "
        "loss.ambient_fraction=0",
    )
