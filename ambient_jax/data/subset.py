"""The recorded training subset (the paper's code never wrote down which images it used).

The subset is `n_train` indices chosen without replacement by `subset_seed` from the source's
N images; its record (`subset.json` in the work dir) holds the source, the sizes, the seed and
the sorted indices, so a run can always be evaluated against exactly its training images.
"""

import dataclasses
import os

import numpy as np

from ambient_jax import files
from ambient_jax.data.corrupt import corrupted_subset
from ambient_jax.data.images import DataError
from ambient_jax.data.sources import load_source
from ambient_jax.types import Config

RECORD_NAME = "subset.json"


@dataclasses.dataclass(frozen=True)
class SplitData:
    train: np.ndarray  # [n_train, R, R, C] in [-1, 1]
    heldout: np.ndarray  # the source's other images (neither trained on clean nor corrupted)
    train_indices: np.ndarray  # indices into the source, sorted
    # data of mixed quality (data.corrupt_*): the corrupted training images and their indices
    # (shape [0, ...] when data.corrupt_count is 0)
    corrupted: np.ndarray
    corrupted_indices: np.ndarray
    num_source: int = 0  # the source's images (other classes' digits are not among them)


def choose_subset(num_images: int, n_train: int, seed: int) -> np.ndarray:
    if n_train < 1:
        raise DataError(f"data.n_train must be >= 1, got {n_train}")
    if n_train > num_images:
        raise DataError(
            f"data.n_train = {n_train} but the source has only {num_images} images: lower "
            "data.n_train"
        )
    return np.sort(np.random.RandomState(seed).permutation(num_images)[:n_train])


def load_split(data_config: Config) -> SplitData:
    """Load the source and split it into the training subset, the corrupted training images of
    the data config's recipe (none by default) and the held-out images: all the others."""
    images = load_source(data_config)
    indices = choose_subset(len(images), data_config.n_train, data_config.subset_seed)
    corrupted, corrupted_indices = corrupted_subset(data_config, images, indices)
    heldout = np.ones(len(images), bool)
    # other classes' digits (corrupt_kind=classes) lie outside the source: its held-out set stays
    heldout[indices] = heldout[corrupted_indices[corrupted_indices < len(images)]] = False
    return SplitData(
        train=images[indices],
        heldout=images[heldout],
        train_indices=indices,
        corrupted=corrupted,
        corrupted_indices=corrupted_indices,
        num_source=len(images),
    )


def record_subset(
    workdir: str, data_config: Config, train_indices: np.ndarray, num_source_images: int
) -> dict:
    """Write subset.json atomically."""
    record = {
        "source": data_config.source,
        "path": data_config.path,
        "resolution": data_config.resolution,
        "classes": [int(c) for c in data_config.get("classes", ())],
        "n_train": int(data_config.n_train),
        "subset_seed": int(data_config.subset_seed),
        "num_source_images": int(num_source_images),
        "train_indices": [int(i) for i in train_indices],
    }
    files.write_json_atomic(os.path.join(workdir, RECORD_NAME), record)
    return record


def read_subset_record(workdir: str) -> dict:
    path = os.path.join(workdir, RECORD_NAME)
    if not files.exists(path):
        raise DataError(
            f"{path} is missing: is {workdir!r} a training work dir (run ambient-train first)?"
        )
    return files.read_json(path)


def check_subset_record(workdir: str, train_indices: np.ndarray) -> None:
    """Raise DataError when the work dir's subset.json records another training subset than
    `train_indices` (a changed source or config would train or evaluate on other images)."""
    if [int(i) for i in read_subset_record(workdir)["train_indices"]] != [
        int(i) for i in train_indices
    ]:
        raise DataError(
            f"{workdir}/subset.json records another training subset than the data source gives now "
            "(the source's images or data.n_train / data.subset_seed changed); use a new --workdir"
        )
