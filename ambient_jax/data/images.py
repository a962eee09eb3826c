"""Image decoding and pixel conversions shared by every image source (folder, tfds), and the
data package's user-facing error."""

import os

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """A data problem a user can fix (missing folder, unreadable image, too few images)."""


def to_unit_range(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_uint8.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray | jax.Array) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255], rounding and clipping as EDM does."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def list_image_files(path: str) -> list[str]:
    if not path or not os.path.isdir(path):
        raise DataError(
            f"data.path {path!r} is not a folder: point --config.data.path at a folder of "
            "PNG/JPEG images"
        )
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES)
    )
    if not files:
        raise DataError(f"data.path {path!r} holds no .png/.jpg/.jpeg images")
    return files


def load_image(file: str, resolution: int, channels: int) -> np.ndarray:
    """One image file -> uint8 [R, R, C]: shorter side resized to R, centre crop."""
    try:
        with Image.open(file) as opened:
            img = opened.convert("L" if channels == 1 else "RGB")
            width, height = img.size
            scale = resolution / min(width, height)
            size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
            img = img.resize(size, Image.Resampling.BICUBIC)
            left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
            array = np.asarray(img.crop((left, top, left + resolution, top + resolution)), np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(
            f"cannot read image {file!r} ({err}); remove it from the folder or replace it"
        ) from err
    return array.reshape(resolution, resolution, channels)
