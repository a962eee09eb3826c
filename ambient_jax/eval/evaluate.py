"""Evaluate one run's samples: memorization against its training subset and quality against
the held-out images, written to <workdir>/eval/ as metrics.json, report.md and figures.

Pixel space (always available):
  * similarity: max cosine similarity of centred pixels to any training image, S > tau shares;
  * extraction: the Carlini et al. criterion (memorization.extraction_report);
  * quality: the Fréchet distance of pixel vectors to the held-out images ("FD-pixel", a crude
    stand-in for FID: equal sample counts only) and the median L2 distance of each sample to its
    nearest held-out image.
Digit space (the embedded MNIST source): FD-digits, the Fréchet distance in the features of a
digit classifier trained once on the embedded digits, and the share of samples it reads as a digit
with confidence (eval.digits), beside the real digits' own values.
As a reference point the same similarity shares are computed for held-out real images (how
close a new real digit is to the training set without any copying).
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable

import numpy as np

from ambient_jax import config as config_lib
from ambient_jax import files, losses, plots, summaries
from ambient_jax.data import check_subset_record, load_source, load_split, to_uint8
from ambient_jax.data.images import to_unit_range
from ambient_jax.eval import convert, digits, dinov2, features, fid, memorization

EVAL_DIR = "eval"


def load_samples(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 [N, H, W, C] from an .npz under key "samples"; one clear error for anything else."""
    if not files.exists(path):
        raise FileNotFoundError(f"samples file {path} does not exist: run ambient-sample first")
    if files.read_bytes(path)[:4] != b"PK\x03\x04":  # every .npz is a zip archive
        raise ValueError(
            f"samples file {path} is not an .npz archive: pass the .npz that ambient-sample "
            "writes (a 'samples' array, uint8 [N, H, W, C]), not its .png grid or another file"
        )
    try:
        data = files.load_npz(path)
        keys = sorted(data)
        samples = data.get("samples")
    except Exception as err:  # numpy raises zipfile, pickle, value and OS errors for a damaged file
        raise ValueError(
            f"samples file {path} is not a readable .npz ({type(err).__name__}: {err})"
        ) from err
    if samples is None:
        raise ValueError(f"samples file {path} has no array 'samples' (it has {keys})")
    if (
        samples.ndim != 4
        or tuple(samples.shape[1:]) != tuple(image_shape)
        or samples.dtype != np.uint8
    ):
        raise ValueError(
            f"samples file {path} holds {samples.dtype} {tuple(samples.shape)}; expected uint8 [N, "
            f"{', '.join(map(str, image_shape))}] (NHWC) for this run"
        )
    if len(samples) < 2:
        raise ValueError(f"samples file {path} holds {len(samples)} image(s); need at least 2")
    return samples


def cached_features(out_dir, name, images_u8, compute, log=print, shared=False):
    """Features of `images_u8` from a .npz that holds the same images (by content hash), else
    computed and saved, so an interrupted evaluation resumes. Samples go to
    <out_dir>/features_<name>.npz; real images (`shared`: training and held-out sets, the same for
    every run of a sweep) go to the user's cache dir under their hash, computed once for all
    runs."""
    digest = hashlib.sha256(np.ascontiguousarray(images_u8).tobytes()).hexdigest()
    if shared:
        path = os.path.join(convert.CACHE_DIR, "features", f"{name}_{digest[:16]}.npz")
    else:
        path = os.path.join(out_dir, f"features_{name}.npz")
    if files.exists(path):
        data = files.load_npz(path)
        if str(data["digest"]) == digest:
            return data["features"]
    log(f"extracting {name} features of {len(images_u8)} images ...")
    start = time.perf_counter()

    def progress(done, total):
        log(
            f"  {name}: {done}/{total} images ({done / (time.perf_counter() - start):.1f} images/s)"
        )

    feats = compute(images_u8, progress)
    files.makedirs(os.path.dirname(path))
    files.save_npz(path, features=feats, digest=digest)
    return feats


def dataset_reference_statistics(data_config, protocol, extract, log=print):
    """Inception (mu, sigma) of the whole data source (the paper's FID reference), cached in the
    user's cache dir, keyed by the source and the protocol."""
    key = json.dumps(
        [
            data_config.source,
            data_config.path,
            data_config.tfds_name,
            data_config.resolution,
            data_config.channels,
            protocol,
        ]
    )
    path = os.path.join(
        convert.CACHE_DIR, "reference_stats", hashlib.sha256(key.encode()).hexdigest()[:16] + ".npz"
    )
    if files.exists(path):
        data = files.load_npz(path)
        return data["mu"], data["sigma"], int(data["count"])
    images = to_uint8(load_source(data_config))
    log(
        f"reference statistics: Inception features of all {len(images)} source images (cached in "
        f"{path}) ..."
    )
    start = time.perf_counter()
    progress = lambda done, total: log(
        f"  reference: {done}/{total} images ({done / (time.perf_counter() - start):.1f} images/s)"
    )
    mu, sigma = fid.feature_statistics(extract(images, progress))
    files.makedirs(os.path.dirname(path))
    files.save_npz(path, mu=mu, sigma=sigma, count=len(images), key=key)
    return mu, sigma, len(images)


@dataclasses.dataclass(frozen=True)
class EmbeddingOptions:
    """Which embedding metrics an evaluation computes, beyond the pixel-space ones it always does.

    inception_fid: FID and Inception similarity (needs the converted weights, ambient-convert).
    inception_protocol: "edm" (EDM's resize) or another of features' protocols.
    fid_reference: "heldout" (FID against as many held-out images) or also "dataset" (the whole
        source, as the paper reports it).
    fid_samples: > 0 computes the embedding metrics on that many samples and held-out images.
    dinov2_weights / dinov2_heads / dinov2_recipe: DINOv2 similarity and FD_DINOv2 from a weight
    file.
    """

    inception_fid: bool = False
    inception_protocol: str = "edm"
    fid_reference: str = "heldout"
    fid_samples: int = 0
    dinov2_weights: str | None = None
    dinov2_heads: int = 6
    dinov2_recipe: str = "paper"


def embedding_metrics(
    out_dir, samples_u8, train_u8, heldout_u8, thresholds, options, log=print, data_config=None
):
    """FID (Inception, vs held-out images or the whole data set) and memorization in Inception /
    DINOv2 space, as `options` asks."""
    inception_fid, inception_protocol, fid_reference = (
        options.inception_fid,
        options.inception_protocol,
        options.fid_reference,
    )
    dinov2_weights, dinov2_heads, dinov2_recipe = (
        options.dinov2_weights,
        options.dinov2_heads,
        options.dinov2_recipe,
    )
    out = {}
    if inception_fid:
        params = convert.load_inception_params()
        extract = lambda x, progress=None: features.inception_features(
            params, x, inception_protocol, progress=progress
        )
        f_samples = cached_features(
            out_dir, f"inception_{inception_protocol}_samples", samples_u8, extract, log
        )
        f_heldout = cached_features(
            out_dir,
            f"inception_{inception_protocol}_heldout",
            heldout_u8,
            extract,
            log,
            shared=True,
        )
        f_train = cached_features(
            out_dir, f"inception_{inception_protocol}_train", train_u8, extract, log, shared=True
        )
        out[f"fid_inception_{inception_protocol}"] = fid.frechet_distance_of(f_samples, f_heldout)
        if fid_reference == "dataset":
            mu, sigma, count = dataset_reference_statistics(
                data_config, inception_protocol, extract, log
            )
            out[f"fid_inception_{inception_protocol}_dataset"] = fid.frechet_distance(
                *fid.feature_statistics(f_samples), mu, sigma
            )
            out["num_reference_images"] = count
        unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)
        out["inception_similarity"] = memorization.similarity_report(
            unit(f_samples), unit(f_train), thresholds
        )[2]
        out["heldout_inception_similarity"] = memorization.similarity_report(
            unit(f_heldout), unit(f_train), thresholds
        )[2]
    if dinov2_weights:
        config, params = convert.load_dinov2(dinov2_weights, dinov2_heads)

        def extract(x, progress=None):
            apply = lambda p, batch: dinov2.DinoV2(config).apply(
                p, dinov2.preprocess(batch, dinov2_recipe)
            )
            return features.extract(
                apply, params, features.to_rgb(x), batch_size=32, progress=progress
            )

        d_samples = cached_features(
            out_dir, f"dinov2_{dinov2_recipe}_samples", samples_u8, extract, log
        )
        # The weight file's name keys the shared cache of real-image features: one per model.
        model_key = (
            f"dinov2_{dinov2_recipe}_{os.path.splitext(os.path.basename(dinov2_weights))[0]}"
        )
        d_heldout = cached_features(
            out_dir, f"{model_key}_heldout", heldout_u8, extract, log, shared=True
        )
        d_train = cached_features(
            out_dir, f"{model_key}_train", train_u8, extract, log, shared=True
        )
        out["dinov2_similarity"] = memorization.similarity_report(d_samples, d_train, thresholds)[2]
        out["heldout_dinov2_similarity"] = memorization.similarity_report(
            d_heldout, d_train, thresholds
        )[2]
        out["fd_dinov2"] = fid.frechet_distance_of(d_samples, d_heldout)
    return out


def inception_available():
    return files.exists(os.path.join(convert.CACHE_DIR, convert.INCEPTION_FILE))


def evaluate_run(
    workdir: str,
    samples_path: str | None = None,
    options: EmbeddingOptions = EmbeddingOptions(),
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate a run's samples (see the module docstring): the pixel-space metrics always, the
    embedding metrics that `options` asks for (options.fid_samples > 0: on the first fid_samples
    samples and as many held-out images, for equal-count comparisons at a lower cost)."""
    fid_samples = options.fid_samples
    config = config_lib.load_config(workdir)
    split = load_split(config.data)
    check_subset_record(workdir, split.train_indices)
    shape = (config.data.resolution, config.data.resolution, config.data.channels)
    samples_path = samples_path or os.path.join(workdir, "samples.npz")
    samples_u8 = load_samples(samples_path, shape)
    samples = to_unit_range(samples_u8)
    thresholds = tuple(config.eval.thresholds)
    if len(split.heldout) < 2:
        raise ValueError(
            f"the data source has {len(split.heldout)} image(s) outside the training subset: "
            "evaluation "
            "compares samples with held-out images, so use a source with more images than "
            "data.n_train"
        )
    if len(split.train) <= config.eval.carlini_k:
        raise ValueError(
            f"the extraction criterion averages over the eval.carlini_k = {config.eval.carlini_k} "
            "nearest "
            f"training images but the run has {len(split.train)}: set eval.carlini_k below that "
            "(ambient-train --config.eval.carlini_k=N on a finished run only changes the "
            "evaluation)"
        )

    train_emb = memorization.pixel_embedding(split.train)
    sims, nearest, similarity = memorization.similarity_report(
        memorization.pixel_embedding(samples), train_emb, thresholds
    )
    order = np.random.RandomState(0).permutation(len(split.heldout))
    heldout = split.heldout[order[: len(samples)]]
    # Real digits disjoint from `heldout`, as many as the samples: the floor of FD-digits.
    other_heldout = split.heldout[order[len(samples) : 2 * len(samples)]]
    _, _, heldout_similarity = memorization.similarity_report(
        memorization.pixel_embedding(heldout), train_emb, thresholds
    )
    flat = lambda x: x.reshape(len(x), -1)
    extracted, l2_train, _ = memorization.extraction_report(
        flat(samples), flat(split.train), config.eval.carlini_k
    )
    heldout_extracted = memorization.extraction_report(
        flat(heldout), flat(split.train), config.eval.carlini_k
    )[0]
    l2_heldout, _ = memorization.blocked_topk(flat(samples), flat(split.heldout), k=1, metric="l2")
    # The noise-robust view: speckle in the samples does not hide a copy there.
    robust = lambda x: memorization.robust_view(
        x, memorization.robust_sigma(config.data.resolution)
    )
    robust_train = robust(split.train)
    robust_stats = {}
    for name, images in (("", samples), ("heldout_", heldout)):
        view = robust(images)
        robust_stats[f"{name}robust_pixel_similarity"] = memorization.similarity_report(
            memorization.pixel_embedding(view),
            memorization.pixel_embedding(robust_train),
            thresholds,
        )[2]
        robust_stats[f"{name}robust_extraction_rate"] = float(
            100
            * memorization.extraction_report(flat(view), flat(robust_train), config.eval.carlini_k)[
                0
            ].mean()
        )

    metrics = {
        "workdir": files.absolute(workdir),
        "samples": files.absolute(samples_path),
        "num_samples": int(len(samples)),
        "num_train": int(len(split.train)),
        "num_heldout_for_fd": int(len(heldout)),
        "objective": config.loss.objective,
        "sigma_tn": config_lib.effective_sigma_tn(config),
        "pixel_similarity": similarity,
        "heldout_pixel_similarity": heldout_similarity,
        "extraction_rate": float(100 * extracted.mean()),
        "heldout_extraction_rate": float(100 * heldout_extracted.mean()),
        **robust_stats,
        "median_l2_to_train": float(np.median(l2_train)),
        "median_l2_to_heldout": float(np.median(l2_heldout[:, 0])),
        "fd_pixel": fid.frechet_distance_of(flat(samples), flat(heldout)),
        "fd_pixel_train_vs_heldout": fid.frechet_distance_of(flat(split.train), flat(heldout)),
    }
    if config.data.source == "mnist":
        metrics.update(
            digits.digit_metrics(
                samples_u8,
                to_uint8(heldout),
                to_uint8(split.train),
                to_uint8(other_heldout) if len(other_heldout) == len(samples) else None,
                log,
            )
        )
    out = os.path.join(workdir, EVAL_DIR)
    files.makedirs(out)
    if fid_samples < 0:
        raise ValueError(f"--fid_samples must be >= 0 (0 = all samples), got {fid_samples}")
    count = min(fid_samples or len(samples_u8), len(samples_u8))
    if options.inception_fid or options.dinov2_weights:
        metrics["num_fid_samples"] = int(count)
        metrics["num_fid_heldout"] = int(len(heldout[:count]))  # fewer where few are held out
    metrics.update(
        embedding_metrics(
            out,
            samples_u8[:count],
            to_uint8(split.train),
            to_uint8(heldout[:count]),
            thresholds,
            options,
            log,
            config.data,
        )
    )
    files.write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    _eval_summaries(workdir, metrics)
    files.write_text_atomic(
        os.path.join(out, "report.md"), markdown_table([metrics]) + diagnosis_link(workdir)
    )
    save_nearest_figure(samples_u8, sims, nearest, split.train, os.path.join(out, "nearest.png"))
    save_histogram(sims, os.path.join(out, "similarity_histogram.png"), thresholds)
    log(markdown_table([metrics]))
    return metrics


ROWS = (
    ("FD-pixel (vs held-out, lower is better)", lambda m: m["fd_pixel"]),
    ("median L2 to nearest held-out", lambda m: m["median_l2_to_heldout"]),
    ("extraction rate % (Carlini)", lambda m: m["extraction_rate"]),
    (
        "robust extraction rate % (noise-robust view)",
        lambda m: m.get("robust_extraction_rate", float("nan")),
    ),
    ("median L2 to nearest training image", lambda m: m["median_l2_to_train"]),
)


def run_label(metrics):
    """A column name: the run dir's name, and its objective where the name does not say it."""
    kind = losses.sigma_tn_label(metrics["sigma_tn"])
    kind = kind if kind == "ddpm" else f"ambient {kind}"
    name = os.path.basename(os.path.normpath(metrics.get("workdir", ""))) or kind
    return kind if name in ("ddpm", "ambient") else f"{name} ({kind})"


def _similarity_rows(runs, space, label):
    """The "S > tau" rows of one embedding space, with the held-out reals' share as reference."""
    if not all(f"{space}_similarity" in m for m in runs):
        return []
    return [
        f"| {label} {key} % (held-out reals: {runs[0][f'heldout_{space}_similarity'][key]:.1f}) | "
        + " | ".join(f"{m[f'{space}_similarity'][key]:.1f}" for m in runs)
        + " |"
        for key in runs[0][f"{space}_similarity"]
        if key.startswith("S>")
    ]


def _digit_rows(runs):
    """FD-digits and the confident-digit share (eval.digits), with the real digits' values."""
    if not all("fd_digits" in m for m in runs):
        return []
    first = runs[0]
    floor = first.get("fd_digits_heldout_vs_heldout")
    reals = f"held-out reals: {floor:.2f}, " if floor is not None else ""
    cells = lambda key, fmt: " | ".join(f"{m[key]:{fmt}}" for m in runs)
    return [
        f"| FD-digits (digit-classifier features; {reals}training images: "
        f"{first['fd_digits_train_vs_heldout']:.2f}) | {cells('fd_digits', '.2f')} |",
        f"| confident digits % (classifier p >= {digits.CONFIDENCE}; held-out reals: "
        f"{first['heldout_confident_digits']:.1f}) | {cells('confident_digits', '.1f')} |",
    ]


def markdown_table(runs):
    """The paper's Table 1 layout: rows are metrics, columns are runs."""
    names = [run_label(m) for m in runs]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(runs)]
    for label, get in ROWS:
        lines.append(f"| {label} | " + " | ".join(f"{get(m):.2f}" for m in runs) + " |")
    lines += _digit_rows(runs)
    for space, label in (("pixel", "pixel"), ("robust_pixel", "robust")):
        lines += _similarity_rows(runs, space, label)
    if all("heldout_robust_extraction_rate" in m for m in runs):
        lines.append(
            "| held-out reals: extraction % / robust extraction % | "
            f"{runs[0]['heldout_extraction_rate']:.1f} / "
            f"{runs[0]['heldout_robust_extraction_rate']:.1f} |" + " |" * (len(runs) - 1)
        )
    for name in (
        "fid_inception_edm",
        "fid_inception_pytorch_fid",
        "fid_inception_edm_dataset",
        "fid_inception_pytorch_fid_dataset",
        "fd_dinov2",
    ):
        if all(name in m for m in runs):
            lines.append(
                f"| {name} (vs held-out) | " + " | ".join(f"{m[name]:.2f}" for m in runs) + " |"
            )
    for space in ("inception", "dinov2"):
        lines += _similarity_rows(runs, space, space)
    if all("num_heldout_for_fd" in m for m in runs):  # older metrics.json files lack it
        lines.append(
            "| samples / held-out images in FD-pixel | "
            + " | ".join(f"{m['num_samples']} / {m['num_heldout_for_fd']}" for m in runs)
            + " |"
        )
    if all("num_fid_samples" in m for m in runs):
        lines.append(
            "| samples / held-out images in FID | "
            + " | ".join(
                f"{m['num_fid_samples']} / {m.get('num_fid_heldout', m['num_fid_samples'])}"
                for m in runs
            )
            + " |"
        )
    lines.append(
        "| samples / training images | "
        + " | ".join(f"{m['num_samples']} / {m['num_train']}" for m in runs)
        + " |"
    )
    return "\n".join(lines) + "\n"


def _eval_summaries(workdir, metrics):
    """The evaluation's scalars in the run's TensorBoard events, at the run's last logged step."""
    steps = summaries.logged_steps(os.path.join(workdir, "metrics.jsonl"))
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    events = summaries.Summaries(workdir)
    events.scalars(max(steps) if steps else 0, flat, "eval")
    events.close()


def diagnosis_link(workdir):
    """The report's pointer to the per-noise-level diagnosis (ambient_jax.eval.diagnose)."""
    if files.exists(os.path.join(workdir, EVAL_DIR, "diagnose.md")):
        return "\nPer-noise-level diagnosis: [diagnose.md](diagnose.md), ![curves](diagnose.png)\n"
    return (
        f"\nPer-noise-level diagnosis: run `ambient-diagnose --workdir={workdir}` (writes "
        "eval/diagnose.md and .png).\n"
    )


def compare_runs(workdirs: list[str]) -> str:
    runs = []
    for w in workdirs:
        path = os.path.join(w, EVAL_DIR, "metrics.json")
        if not files.exists(path):
            raise FileNotFoundError(f"{path} is missing: run ambient-eval --workdir={w} first")
        runs.append(json.loads(files.read_text(path)))
    return markdown_table(runs)


def save_nearest_figure(samples_u8, sims, nearest, train, path, count=16):
    """The most similar samples (top row of each pair) above their nearest training images."""
    order = np.argsort(-sims)[:count]
    pairs = np.concatenate([samples_u8[order], to_uint8(train[nearest[order]])])
    plots.save_grid(pairs, path, cols=len(order))


def save_histogram(sims, path, thresholds):
    plots.save_histogram(
        sims,
        path,
        "max cosine similarity to a training image (pixels)",
        "samples",
        value_range=(min(0.0, float(sims.min())), 1.0),
        marks=thresholds,
    )
