"""Data at scale: tensorflow-datasets ArrayRecord sources, read without TensorFlow.

* `prepare_image_folder` turns a folder of images into a tfds data set once (ArrayRecord files,
  the image stored as a uint8 Tensor feature, so TensorFlow is not needed to write or read it):
      ambient-prepare --folder=MY_IMAGES --data_dir=~/tensorflow_datasets --resolution=64 \\
          --channels=3
  then train with --config.data.source=tfds --config.data.tfds_name=ambient_image_folder
  --config.data.tfds_data_dir=~/tensorflow_datasets.
* Public data sets by name (cifar10, ...) are read the same way once prepared as ArrayRecord;
  preparing them needs TensorFlow and the internet (`pip install ambient-jax[tfds-prepare]`),
  which `load_tfds_images` does on first use when both are there.
* `StreamingBatches`: for data sets too large to hold on device, every host reads only its rows
  of each global batch through grain (random access over the data source, worker threads),
  one batch ahead of the step. The rows of step s are the same draws the on-device path makes,
  so the two paths train the same model.
"""

import concurrent.futures
import functools
import glob
import os
from typing import Any

import grain
import numpy as np

from ambient_jax import parallel
from ambient_jax.data.images import DataError, list_image_files, load_image
from ambient_jax.types import Config

BUILDER_NAME = "ambient_image_folder"


@functools.cache
def _builder_class():
    # tensorflow_datasets takes seconds to import: only the tfds source and ambient-prepare need it
    import tensorflow_datasets as tfds

    class AmbientImageFolder(tfds.core.GeneratorBasedBuilder):
        """Images of a folder, resized and centre-cropped, as uint8 tensors (no TensorFlow
        needed)."""

        name = BUILDER_NAME
        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, folder="", resolution=64, channels=3, **kwargs):
            self._folder, self._resolution, self._channels = folder, resolution, channels
            super().__init__(**kwargs)

        def _info(self):
            shape = (self._resolution, self._resolution, self._channels)
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"images of {self._folder} at "
                f"{self._resolution}x{self._resolution}x{self._channels}",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
                        "file_index": tfds.features.Scalar(dtype=np.int64),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples()}

        def _generate_examples(self):

            for i, file in enumerate(list_image_files(self._folder)):
                yield (
                    i,
                    {"image": load_image(file, self._resolution, self._channels), "file_index": i},
                )

    return AmbientImageFolder


def prepare_image_folder(folder: str, data_dir: str, resolution: int, channels: int) -> Any:
    """Write the folder's images as the tfds data set `ambient_image_folder` under data_dir."""
    builder = _builder_class()(
        folder=folder,
        resolution=resolution,
        channels=channels,
        data_dir=os.path.expanduser(data_dir),
        file_format="array_record",
    )
    builder.download_and_prepare()
    return builder


def open_source(data_config: Config) -> Any:
    """A random-access tfds data source of the configured split."""
    import tensorflow_datasets as tfds  # seconds to import: see _builder_class

    name, split = data_config.tfds_name, data_config.tfds_split
    data_dir = os.path.expanduser(data_config.tfds_data_dir) or None
    # A prepared data set describes itself (features, shapes): read it from its folder, so no
    # builder class (and no TensorFlow) is needed.
    root = data_dir or os.path.expanduser("~/tensorflow_datasets")
    versions = sorted(glob.glob(os.path.join(root, name, "*", "dataset_info.json")))
    if versions:
        return tfds.builder_from_directory(os.path.dirname(versions[-1])).as_data_source(
            split=split
        )
    if name == BUILDER_NAME:
        raise DataError(
            f"no prepared '{name}' data set under data.tfds_data_dir={root!r}: run ambient-prepare "
            f"--folder=YOUR_IMAGES --data_dir={root} first"
        )
    try:
        import tensorflow  # noqa: F401  (tfds needs it to download and encode public sets)
    except ImportError:
        raise DataError(
            f"tfds data set {name!r} is not prepared under data.tfds_data_dir={root!r}, and "
            "preparing it needs "
            "TensorFlow and the internet: pip install 'ambient-jax[tfds-prepare]', or prepare it "
            "elsewhere with "
            f"`tfds build {name} --file_format=array_record` and point data.tfds_data_dir at it"
        ) from None
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder.as_data_source(split=split)


def record_image(record: dict, data_config: Config) -> np.ndarray:
    """The uint8 [R, R, C] image of one record, checked against the config."""
    image = np.asarray(record[data_config.tfds_image_key], np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    want = (data_config.resolution, data_config.resolution, data_config.channels)
    if image.shape != want:
        raise DataError(
            f"tfds data set {data_config.tfds_name!r} holds images of shape {image.shape}, the "
            f"config asks for {want}: "
            "set data.resolution / data.channels to match, or prepare the data at that size"
        )
    return image


def load_tfds_images(data_config: Config) -> np.ndarray:
    """Every image of the source as uint8 [N, R, R, C] (the resident path: small sets)."""
    source = open_source(data_config)
    return np.stack([record_image(source[i], data_config) for i in range(len(source))])


class StreamingBatches:
    """This host's rows of each step's global batch, read from a tfds source through grain.

    rows_for(step) -> (images float32 [rows, R, R, C] in [-1, 1], source indices [rows]).
    `index_fn(step)` gives the global batch's positions in the subset
    (train_step.batch_indices), so the draws match the resident path's; `subset` maps
    training-subset positions to source records.
    """

    def __init__(
        self, data_config, subset, index_fn, batch_size, process_index=0, process_count=1, threads=8
    ):
        self._dataset = grain.MapDataset.source(open_source(data_config)).map(
            lambda r: record_image(r, data_config)
        )
        self._subset = np.asarray(subset)
        self._index_fn = index_fn
        self._rows = parallel.process_rows(batch_size, process_index, process_count)
        self._readers = concurrent.futures.ThreadPoolExecutor(threads)  # one record each
        self._batches = concurrent.futures.ThreadPoolExecutor(1)  # one batch ahead of the step
        self._pending = {}

    def _read(self, step):
        positions = np.asarray(self._index_fn(step))[self._rows]
        images = list(self._readers.map(lambda p: self._dataset[int(self._subset[p])], positions))
        return np.stack(images).astype(np.float32) / 127.5 - 1.0, self._subset[positions]

    def rows_for(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        future = self._pending.pop(step, None) or self._batches.submit(self._read, step)
        self._pending = {
            step + 1: self._batches.submit(self._read, step + 1)
        }  # prefetch the next batch
        return future.result()
