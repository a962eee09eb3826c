"""Memorization tracked during training (train.track_every > 0): a few cheap numbers, logged to
metrics.jsonl and drawn in tracking.png, that show when a run starts copying.

At each tracking step, with the EMA parameters:
  * the generalization gap at the levels train.track_sigmas: the per-pixel denoising error
    ||D(x0 + sigma n, sigma) - x0||^2 / d on held-out images minus the same on training images
    (fixed images and fixed noise for the whole run, so the curve moves only with the model);
  * the extraction share: train.track_samples samples (fixed latents, the sampler of the run)
    checked with the Carlini et al. criterion against the training set, in pixels and in the
    noise-robust view of ambient_jax.eval.memorization, and their S > 0.95 shares (max cosine
    similarity to a training image) in both views;
  * the same four shares for as many held-out real images (the same at every event): the level of
    a model that does not copy.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax import files, plots, summaries
from ambient_jax.data.images import to_unit_range
from ambient_jax.diffusion import generate, precond
from ambient_jax.eval import memorization
from ambient_jax.types import PyTree

TRACK_IMAGES = 128  # training and held-out images in the gap estimate
TRACK_FILE = "tracking.png"


def _gap_fn(model, preconditioning):
    @jax.jit
    def errors(params, x0, noise, sigmas):
        denoise = precond.network_denoiser(model, params, preconditioning)

        def at(sigma):
            s = jnp.full((x0.shape[0],), sigma)
            d = denoise(x0 + sigma * noise, s)
            return jnp.mean(jnp.square(d - x0).reshape(x0.shape[0], -1), axis=1)

        return jax.vmap(at)(sigmas)  # [levels, images]

    return errors


def _flat(images):
    return np.asarray(images).reshape(len(images), -1)


class Tracker:
    """Called with (ema_params, step): returns the tracking record and keeps the history."""

    def __init__(self, config, model, train_images, heldout_images, sample_fn, mesh):
        self.config, self.model, self.sample_fn, self.mesh = config, model, sample_fn, mesh
        rng = np.random.RandomState(0)
        pick = lambda a: a[rng.permutation(len(a))[:TRACK_IMAGES]]
        self.train_all = np.asarray(train_images, np.float32)
        self.images = {
            "train": jnp.asarray(pick(self.train_all)),
            "heldout": jnp.asarray(pick(np.asarray(heldout_images))),
        }
        key = jax.random.key(config.train.seed)
        self.noise = {
            k: jax.random.normal(jax.random.fold_in(key, i), v.shape)
            for i, (k, v) in enumerate(self.images.items())
        }
        self.sigmas = jnp.asarray(config.train.track_sigmas, jnp.float32)
        self.errors = _gap_fn(model, precond.from_config(config))
        self.robust_px = memorization.robust_sigma(config.data.resolution)
        # The training set's two views are the same at every event: computed once here.
        self.train_views = self._views(self.train_all)
        self.train_embeddings = [memorization.pixel_embedding(v) for v in self.train_views]
        count = min(int(config.train.track_samples), len(heldout_images))
        self.heldout_shares = {
            f"track_heldout_{k[len('track_') :]}": v
            for k, v in self._copy_shares(pick(np.asarray(heldout_images))[:count]).items()
        }

    def _views(self, images):
        """Flat pixel and noise-robust views of float images [N, H, W, C]."""
        return _flat(images), _flat(memorization.robust_view(images, self.robust_px))

    def _copy_shares(self, images):
        """% of `images` within the extraction criterion and with S > 0.95, in both views."""
        k = self.config.eval.carlini_k
        out = {}
        for view, name, train, train_embedding in zip(
            self._views(images), ("", "robust_"), self.train_views, self.train_embeddings
        ):
            out[f"track_{name}extraction"] = memorization.extraction_rate(view, train, k)
            out[f"track_{name}s95"] = memorization.similarity_report(
                memorization.pixel_embedding(view), train_embedding, (0.95,)
            )[2]["S>0.95"]
        return out

    def __call__(self, ema_params: PyTree, step: int) -> dict:
        del step  # the record is the same function of the parameters at any step
        start = time.perf_counter()
        err = {
            k: np.asarray(self.errors(ema_params, x, self.noise[k], self.sigmas)).mean(axis=1)
            for k, x in self.images.items()
        }
        record = {
            f"track_gap_sigma{s:g}": float(h - t)
            for s, h, t in zip(self.config.train.track_sigmas, err["heldout"], err["train"])
        }
        count = int(self.config.train.track_samples)
        if count:
            samples = generate.generate(
                self.config,
                self.model,
                ema_params,
                count,
                seed=self.config.sample.seed,
                batch_size=count,
                sample_fn=self.sample_fn,
                mesh=self.mesh,
            )
            record.update(self._copy_shares(to_unit_range(samples)))
            record.update(self.heldout_shares)
        record["track_seconds"] = time.perf_counter() - start
        return record

    @staticmethod
    def save_plot(workdir: str) -> None:
        """tracking.png from every tracking record in the run's metrics.jsonl (resumed runs too)."""
        path = summaries.metrics_path(workdir)
        if not files.exists(path):
            return
        history = [
            r
            for r in map(json.loads, files.read_text(path).splitlines())
            if any(k.startswith("track_gap") for k in r)
        ]
        if history:
            plots.save_tracking(history, os.path.join(workdir, TRACK_FILE))
