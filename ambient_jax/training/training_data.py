"""The training data of a run: the subset held on device (with, for data of mixed quality,
each image's sigma_tn, clean flag, copy noise and the level it is usable from), or streamed."""

import jax
import numpy as np

from ambient_jax import config as config_lib
from ambient_jax import parallel
from ambient_jax.data import DataError, SplitData, corrupt, load_split, record_subset
from ambient_jax.data.subset import choose_subset
from ambient_jax.data.tfds_source import StreamingBatches, open_source
from ambient_jax.diffusion import objective
from ambient_jax.training import train_step
from ambient_jax.types import Config, Log


def mixed_quality(config: Config) -> bool:
    """Whether the run trains on corrupted images beside its clean ones."""
    return bool(config.data.corrupt_count) and config.data.corrupt_sigma_tn != "unused"


class TrainingData:
    """The training subset, held on device (default) or streamed batch by batch (data.streaming)."""

    def __init__(self, config):
        self.config = config
        self.heldout = None
        # data of mixed quality: (source indices, sigma_tn, clean flags, noise added to make x_tn)
        self.corrupted = None
        if not config.data.streaming:
            split = load_split(config.data)
            self.images, self.train_indices, self.heldout = (
                split.train,
                split.train_indices,
                split.heldout,
            )
            self.held = train_step.HeldData(self.images, self.train_indices.astype(np.int32))
            if mixed_quality(config):
                self.corrupted = self.hold_mixed_quality(config, split)
            want = config_lib.image_shape(config)
            if tuple(self.images.shape[1:]) != want:
                raise DataError(
                    f"the {config.data.source} source gives images of shape "
                    f"{tuple(self.images.shape[1:])} but the config "
                    f"asks for {want} (data.resolution, data.resolution, data.channels): set "
                    "data.channels="
                    f"{self.images.shape[-1]} or use a source with {want[-1]}-channel images"
                )
            self.num_source_images = split.num_source
            if config.train.track_every and len(self.heldout) < 2:
                raise DataError(
                    f"config field train.track_every: tracking compares the model on training "
                    f"and held-out images, but data.n_train = {len(self.images)} leaves "
                    f"{len(self.heldout)} of the {config.data.source} source's "
                    f"{self.num_source_images} images held out: lower data.n_train or set "
                    "train.track_every=0"
                )
            return
        self.num_source_images = len(open_source(config.data))
        self.train_indices = choose_subset(
            self.num_source_images, config.data.n_train, config.data.subset_seed
        )
        self.images = None

    def hold_mixed_quality(
        self, config: Config, split: SplitData
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Data of mixed quality: the clean images (at the run's sigma_tn, 0 for ddpm) and the
        other ones (corrupted at their annotated sigma_tn, or out of distribution below their
        sigma_max) held together, each with its sigma_tn, clean flag, the noise that makes its
        x_tn and its window of levels (objective.image_window), sorted by the window's bottom
        (what a batch drawn level first needs); returns what corrupted.json records."""
        sigma_tn, clean, copy_noise = corrupt.annotation_values(
            config.data, split.corrupted_indices
        )
        sigma_max = corrupt.window_tops(config.data, split.corrupted_indices)
        n, run_sigma_tn = len(self.images), config_lib.effective_sigma_tn(config)
        all_sigma_tn = np.concatenate([np.full(n, run_sigma_tn), sigma_tn]).astype(np.float32)
        all_clean = np.concatenate([np.ones(n, bool), clean])
        all_top = np.concatenate([np.full(n, np.inf, np.float32), sigma_max])
        # from the float32 levels the loss reads, so each boundary is the loss's to the last bit
        usable_from, usable_to = objective.image_window(
            all_sigma_tn, all_clean, all_top, config.loss.switch_ratio,
            config.loss.switch_offset, xp=np,
        )  # fmt: skip
        usable_from = usable_from.astype(np.float32)
        empty = np.flatnonzero(usable_to < usable_from)
        if len(empty):
            i = empty[0] - n
            raise DataError(
                f"data.corrupt_sigma_max: source image {split.corrupted_indices[i]} would train at "
                f"no level: its sigma_max {sigma_max[i]:g} lies below the level its sigma_tn "
                f"{sigma_tn[i]:g} makes it usable from ({usable_from[empty[0]]:g}); "
                f"{len(empty)} such images: raise their sigma_max or lower their sigma_tn"
            )
        order = np.argsort(usable_from, kind="stable")
        held = train_step.HeldData(
            images=np.concatenate([self.images, split.corrupted]),
            source_index=np.concatenate([self.train_indices, split.corrupted_indices]),
            sigma_tn=all_sigma_tn,
            clean=all_clean,
            copy_noise=np.concatenate([np.full(n, run_sigma_tn), copy_noise]).astype(np.float32),
            usable_from=usable_from,
            # no top anywhere: none held, so the batch is drawn as before, bit for bit
            usable_to=usable_to if np.isfinite(usable_to).any() else None,
        )
        self.held = train_step.HeldData(*(None if a is None else a[order] for a in held))
        self.held = self.held._replace(source_index=self.held.source_index.astype(np.int32))
        return split.corrupted_indices, sigma_tn, clean, copy_noise, sigma_max

    def record(self, workdir: str, config: Config) -> None:
        """subset.json (the clean training images) and, with corrupted ones, corrupted.json."""
        record_subset(workdir, config.data, self.train_indices, self.num_source_images)
        if self.corrupted is not None:
            corrupt.record_corrupted(workdir, config.data, *self.corrupted)

    def place(self, mesh: jax.sharding.Mesh) -> None:
        """Put the held data on the step's devices (replicated over `mesh`, as the compiled step
        takes it), or open the stream of batches."""
        if self.images is not None:
            self.on_device = parallel.place_replicated(self.held, mesh)
            return

        root, batch, n = (
            train_step.step_root_key(self.config),
            self.config.train.batch_size,
            len(self.train_indices),
        )
        host_indices = jax.jit(lambda step: train_step.batch_indices(root, step, batch, n))
        self.mesh = mesh
        self.stream = StreamingBatches(
            self.config.data,
            self.train_indices,
            lambda s: np.asarray(host_indices(s)),
            batch,
            jax.process_index(),
            jax.process_count(),
        )

    def for_step(self, step: int) -> train_step.HeldData | train_step.Rows:
        """The step's argument after the state: the training data held on device, or the
        streamed global batch."""
        if self.images is not None:
            return self.on_device
        x0, index = self.stream.rows_for(step)
        return train_step.Rows(
            parallel.global_batch(x0, self.mesh),
            parallel.global_batch(index.astype(np.int32), self.mesh),
        )


def warn_if_few_heldout(config: Config, training: "TrainingData", log: Log) -> None:
    """The evaluation compares the sample.num_samples samples with as many held-out images (FD,
    FID, the held-out reference rows): say up front when fewer remain."""
    if training.heldout is None or len(training.heldout) >= config.sample.num_samples:
        return
    log(
        f"warning: data.n_train = {len(training.images)} leaves {len(training.heldout)} of the "
        f"source's {training.num_source_images} images held out, fewer than the "
        f"{config.sample.num_samples} samples the evaluation compares with as many held-out "
        f"images: its FD and FID will use {len(training.heldout)}"
        + ("" if len(training.heldout) >= 2 else ", and it cannot run without two")
    )
