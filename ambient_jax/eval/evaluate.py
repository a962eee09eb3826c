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
import zipfile
from typing import Any, Callable

import numpy as np

from ambient_jax import config as config_lib
from ambient_jax import files
from ambient_jax.data import check_subset_record, load_source, load_split, to_uint8
from ambient_jax.data.images import to_unit_range
from ambient_jax.eval import convert, digits, dinov2, features, fid, memorization, report
from ambient_jax.types import Config, Log

EVAL_DIR = report.EVAL_DIR


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


def cached_features(
    out_dir: str,
    name: str,
    images_u8: np.ndarray,
    compute: Callable[..., np.ndarray],
    log: Log = print,
    shared: bool = False,
) -> np.ndarray:
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
        try:
            data = files.load_npz(path)
            if str(data["digest"]) == digest:
                return data["features"]
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as err:
            log(f"warning: the feature cache {path} is damaged ({err}); computing it again")
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


def dataset_reference_statistics(
    data_config: Config,
    protocol: str,
    extract: Callable[..., np.ndarray],
    log: Log = print,
) -> tuple[np.ndarray, np.ndarray, int]:
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
    out_dir: str,
    samples_u8: np.ndarray,
    train_u8: np.ndarray,
    heldout_u8: np.ndarray,
    thresholds: tuple[float, ...],
    options: "EmbeddingOptions",
    log: Log = print,
    data_config: Config | None = None,
) -> dict:
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
    out: dict[str, Any] = {}
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


def inception_available() -> bool:
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
    l2_heldout, _ = memorization.blocked_topk(flat(samples), flat(split.heldout), k=1, metric="l2")
    # The noise-robust view: speckle in the samples does not hide a copy there.
    robust = lambda x: memorization.robust_view(
        x, memorization.robust_sigma(config.data.resolution)
    )
    robust_train = robust(split.train)
    robust_stats: dict[str, Any] = {}
    for name, images in (("", samples), ("heldout_", heldout)):
        view = robust(images)
        robust_stats[f"{name}robust_pixel_similarity"] = memorization.similarity_report(
            memorization.pixel_embedding(view),
            memorization.pixel_embedding(robust_train),
            thresholds,
        )[2]
        robust_stats[f"{name}robust_extraction_rate"] = memorization.extraction_rate(
            flat(view), flat(robust_train), config.eval.carlini_k
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
        "heldout_extraction_rate": memorization.extraction_rate(
            flat(heldout), flat(split.train), config.eval.carlini_k
        ),
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
                tuple(config.data.get("classes", ())),
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
    report.write_outputs(workdir, metrics, samples_u8, sims, nearest, split.train, thresholds)
    log(report.markdown_table([metrics]))
    return metrics
