"""EDM's augmentation pipeline (Karras et al. 2022, `training/augment.py` of NVlabs/edm, built on
the ADA pipeline of Karras et al. 2020), written for JAX: one image and one key at a time, vmapped
over the batch inside the compiled train step.

Each transform has a probability multiplier; it is applied to an image with probability
multiplier * p (p = data.augment_p) and then draws its parameters. What was applied goes to the
network as augment labels (zero where nothing was applied), so that it learns the augmented
images as conditional on those labels and samples, with zero labels, the un-augmented data.

  pixel blitting  x-flip, y-flip, 90-degree rotations, integer translation (reflecting the edges)
  geometric       isotropic scaling, fractional rotation, anisotropic scaling, fractional
                  translation: one inverse affine matrix per image, applied as EDM does it:
                  reflect-pad, 2x upsampling with the sym6 wavelet filter, bilinear resampling
                  (zeros outside), filtered 2x downsampling and crop
  colour          brightness, contrast, luma flip, hue rotation, saturation: one 4x4 matrix

Labels, in EDM's order for the transforms that are on: xflip 1, yflip 1, rotate_int 2,
translate_int 2, scale 1, rotate_frac 2 (cos - 1, sin), aniso 2, translate_frac 2, brightness 1,
contrast 1, lumaflip 1, hue 2, saturation 1. EDM's recipe (EDM_RECIPE) is x-flip with
multiplier 1e8 (a fair coin on every image), y-flip, scale, rotate_frac, aniso and translate_frac
at 1: 9 labels.

Every transform draws from its own sub-key of the image's key, so switching one transform on or
off leaves the draws of the others unchanged.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax.checks import need
from ambient_jax.types import Config

# The low-pass filter of the sym6 wavelet (EDM's resampling filter for the geometric transforms).
SYM6 = np.asarray(
    [
        0.015404109327027373,
        0.0034907120842174702,
        -0.11799011114819057,
        -0.048311742585633,
        0.4910559419267466,
        0.787641141030194,
        0.3379294217276218,
        -0.07263752278646252,
        -0.021060292512300564,
        0.04472490177066578,
        0.0017677118642428036,
        -0.007800708325034148,
    ],
    np.float32,
)
LUMA_AXIS = np.asarray([1, 1, 1, 0], np.float32) / np.sqrt(3)


# Every transform in EDM's order (the order of the labels), with its number of labels.
LABEL_WIDTHS = (
    ("xflip", 1),
    ("yflip", 1),
    ("rotate_int", 2),
    ("translate_int", 2),
    ("scale", 1),
    ("rotate_frac", 2),
    ("aniso", 2),
    ("translate_frac", 2),
    ("brightness", 1),
    ("contrast", 1),
    ("lumaflip", 1),
    ("hue", 2),
    ("saturation", 1),
)


@dataclasses.dataclass(frozen=True)
class AugmentPipe:
    """Probability multipliers (0 = off) and parameter spreads, EDM's names and defaults."""

    xflip: float = 0.0
    yflip: float = 0.0
    rotate_int: float = 0.0
    translate_int: float = 0.0
    translate_int_max: float = 0.125  # range of integer translation, relative to the image size
    scale: float = 0.0
    rotate_frac: float = 0.0
    aniso: float = 0.0
    translate_frac: float = 0.0
    scale_std: float = 0.2  # log2 standard deviation of isotropic scaling
    rotate_frac_max: float = 1.0  # range of fractional rotation, 1 = full circle
    aniso_std: float = 0.2  # log2 standard deviation of anisotropic scaling
    aniso_rotate_prob: float = 0.5  # share of anisotropic scalings in a rotated frame
    translate_frac_std: float = 0.125  # std of fractional translation, relative to the size
    brightness: float = 0.0
    contrast: float = 0.0
    lumaflip: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    brightness_std: float = 0.2
    contrast_std: float = 0.5  # log2
    hue_max: float = 1.0  # 1 = full circle
    saturation_std: float = 1.0  # log2

    @property
    def label_dim(self) -> int:
        return sum(width for name, width in LABEL_WIDTHS if getattr(self, name) > 0)

    @property
    def geometric(self) -> bool:
        return max(self.scale, self.rotate_frac, self.aniso, self.translate_frac) > 0

    @property
    def colour(self) -> bool:
        return max(self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation) > 0


# EDM's train.py with --augment (also the paper's train.py): the geometric recipe, 9 labels.
EDM_RECIPE = AugmentPipe(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
# The same with ADA's colour transforms on as well (15 labels).
EDM_COLOUR_RECIPE = dataclasses.replace(
    EDM_RECIPE, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1
)
RECIPES = {"edm": EDM_RECIPE, "edm_colour": EDM_COLOUR_RECIPE}

# Sub-key of each transform (fold_in of the image's key).
_KEYS = {name: i for i, (name, _) in enumerate(LABEL_WIDTHS)}


def _draw(key, name, multiplier, p):
    """(whether `name` is applied to this image, a key for its parameters)."""
    k_apply, k_value = jax.random.split(jax.random.fold_in(key, _KEYS[name]))
    return jax.random.uniform(k_apply) < multiplier * p, k_value


def _translate2d(tx, ty):
    return jnp.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _scale2d(sx, sy):
    return jnp.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def _rotate2d(theta):
    c, s = jnp.cos(theta), jnp.sin(theta)
    return jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotate3d(v, theta):
    """Rotation by theta about the unit axis v (homogeneous 4x4)."""
    vx, vy, vz = v[0], v[1], v[2]
    s, c = jnp.sin(theta), jnp.cos(theta)
    cc = 1 - c
    return jnp.array(
        [
            [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0.0],
            [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0.0],
            [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def _blit(image, key, pipe, p, labels):
    """x/y flips, 90-degree rotations and integer translation: exact pixel copies. image [H,W,C]."""
    h, w = image.shape[0], image.shape[1]
    if pipe.xflip > 0:
        on, k = _draw(key, "xflip", pipe.xflip, p)
        flip = on & (jax.random.randint(k, (), 0, 2) == 1)
        image = jnp.where(flip, image[:, ::-1], image)
        labels.append(flip.astype(jnp.float32)[None])
    if pipe.yflip > 0:
        on, k = _draw(key, "yflip", pipe.yflip, p)
        flip = on & (jax.random.randint(k, (), 0, 2) == 1)
        image = jnp.where(flip, image[::-1], image)
        labels.append(flip.astype(jnp.float32)[None])
    if pipe.rotate_int > 0:
        if h != w:
            raise ValueError("90-degree rotations need square images")
        on, k = _draw(key, "rotate_int", pipe.rotate_int, p)
        quarter = jnp.where(on, jax.random.randint(k, (), 0, 4), 0)  # counter-clockwise turns
        image = jnp.where((quarter == 1) | (quarter == 2), image[:, ::-1], image)
        image = jnp.where((quarter == 2) | (quarter == 3), image[::-1], image)
        image = jnp.where((quarter == 1) | (quarter == 3), jnp.swapaxes(image, 0, 1), image)
        labels.append(
            jnp.stack([(quarter == 1) | (quarter == 2), (quarter == 2) | (quarter == 3)]).astype(
                jnp.float32
            )
        )
    if pipe.translate_int > 0:
        on, k = _draw(key, "translate_int", pipe.translate_int, p)
        shift = jnp.where(on, jax.random.uniform(k, (2,), minval=-1.0, maxval=1.0), 0.0)
        tx = jnp.round(shift[0] * w * pipe.translate_int_max).astype(jnp.int32)
        ty = jnp.round(shift[1] * h * pipe.translate_int_max).astype(jnp.int32)
        # Reflection without repeating the edge pixel (period 2n - 2), as EDM indexes it.
        cols = (w - 1) - jnp.abs((w - 1) - jnp.mod(jnp.arange(w) - tx, 2 * w - 2))
        rows = (h - 1) - jnp.abs((h - 1) - jnp.mod(jnp.arange(h) + ty, 2 * h - 2))
        image = image[rows][:, cols]
        labels.append(
            jnp.stack([tx / (w * pipe.translate_int_max), ty / (h * pipe.translate_int_max)])
        )
    return image


def _geometric_matrix(key, pipe, p, h, w, labels):
    """The inverse affine map (output pixel -> input pixel, centred coordinates) and its labels."""
    g_inv = jnp.eye(3)
    if pipe.scale > 0:
        on, k = _draw(key, "scale", pipe.scale, p)
        z = jnp.where(on, jax.random.normal(k), 0.0)
        s = jnp.exp2(z * pipe.scale_std)
        g_inv = g_inv @ _scale2d(1 / s, 1 / s)
        labels.append(z[None])
    if pipe.rotate_frac > 0:
        on, k = _draw(key, "rotate_frac", pipe.rotate_frac, p)
        theta = jax.random.uniform(k, minval=-1.0, maxval=1.0) * (math.pi * pipe.rotate_frac_max)
        theta = jnp.where(on, theta, 0.0)
        g_inv = g_inv @ _rotate2d(theta)  # EDM: rotate2d_inv(-theta)
        labels.append(jnp.stack([jnp.cos(theta) - 1, jnp.sin(theta)]))
    if pipe.aniso > 0:
        on, k = _draw(key, "aniso", pipe.aniso, p)
        k_z, k_r, k_rotated = jax.random.split(k, 3)
        z = jnp.where(on, jax.random.normal(k_z), 0.0)
        r = jax.random.uniform(k_r, minval=-1.0, maxval=1.0) * math.pi
        r = jnp.where(jax.random.uniform(k_rotated) < pipe.aniso_rotate_prob, r, 0.0)
        s = jnp.exp2(z * pipe.aniso_std)
        g_inv = g_inv @ _rotate2d(-r) @ _scale2d(1 / s, s) @ _rotate2d(r)
        labels.append(jnp.stack([z * jnp.cos(r), z * jnp.sin(r)]))
    if pipe.translate_frac > 0:
        on, k = _draw(key, "translate_frac", pipe.translate_frac, p)
        z = jnp.where(on, jax.random.normal(k, (2,)), 0.0)
        g_inv = g_inv @ _translate2d(
            -z[0] * w * pipe.translate_frac_std, -z[1] * h * pipe.translate_frac_std
        )
        labels.append(z)
    return g_inv


def _filter_axis(x, taps, axis, *, dilate=1, stride=1, padding):
    """Depthwise 1-D cross-correlation of x [H,W,C] along axis 0 or 1 (zero padding)."""
    c = x.shape[-1]
    shape = (len(taps), 1, 1, c) if axis == 0 else (1, len(taps), 1, c)
    kernel = jnp.broadcast_to(jnp.asarray(taps, x.dtype).reshape(shape[:2] + (1, 1)), shape)
    strides = (stride, 1) if axis == 0 else (1, stride)
    dilation = (dilate, 1) if axis == 0 else (1, dilate)
    pads = [padding, (0, 0)] if axis == 0 else [(0, 0), padding]
    out = jax.lax.conv_general_dilated(
        x[None],
        kernel,
        strides,
        pads,
        lhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )
    return out[0]


def _bilinear(image, x, y):
    """grid_sample(bilinear, zeros outside, align_corners=False) at pixel coordinates x, y."""
    x0, y0 = jnp.floor(x), jnp.floor(y)
    out = 0.0
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (1 - jnp.abs(x - xi)) * (1 - jnp.abs(y - yi))
        inside = (xi >= 0) & (xi <= image.shape[1] - 1) & (yi >= 0) & (yi <= image.shape[0] - 1)
        xc = jnp.clip(xi, 0, image.shape[1] - 1).astype(jnp.int32)
        yc = jnp.clip(yi, 0, image.shape[0] - 1).astype(jnp.int32)
        out = out + jnp.where(inside, weight, 0.0)[..., None] * image[yc, xc]
    return out


def _warp(image, g_inv):
    """EDM's execution of the geometric transforms for one image [H,W,C]."""
    h, w = image.shape[0], image.shape[1]
    taps = len(SYM6)
    hz_pad = taps // 4
    # EDM pads by the margin the batch's transformed corners need, at most (W-1, H-1); padding
    # by that maximum always leaves the same values wherever the resampling reads.
    mx, my = w - 1, h - 1
    image = jnp.pad(image, ((my, my), (mx, mx), (0, 0)), mode="reflect")
    # 2x upsampling: zeros between samples (n -> 2n - 1), then the reversed filter (-> 2n).
    pad_up = (taps + 1) // 2
    for axis in (1, 0):
        image = _filter_axis(image, SYM6[::-1], axis, dilate=2, padding=(pad_up, pad_up))
    g_inv = _scale2d(2, 2) @ g_inv @ _scale2d(0.5, 0.5)
    g_inv = _translate2d(-0.5, -0.5) @ g_inv @ _translate2d(0.5, 0.5)
    out_h, out_w = (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2
    in_h, in_w = image.shape[0], image.shape[1]
    g_inv = _scale2d(2 / in_w, 2 / in_h) @ g_inv @ _scale2d(out_w / 2, out_h / 2)
    # affine_grid(align_corners=False): output pixel centres in [-1, 1]; then grid_sample's
    # mapping back to input pixel coordinates.
    gx, gy = jnp.meshgrid(
        (2 * jnp.arange(out_w) + 1) / out_w - 1, (2 * jnp.arange(out_h) + 1) / out_h - 1
    )
    sx = g_inv[0, 0] * gx + g_inv[0, 1] * gy + g_inv[0, 2]
    sy = g_inv[1, 0] * gx + g_inv[1, 1] * gy + g_inv[1, 2]
    image = _bilinear(image, ((sx + 1) * in_w - 1) / 2, ((sy + 1) * in_h - 1) / 2)
    # Filtered 2x downsampling and crop.
    pad_down = (taps - 1) // 2
    for axis in (1, 0):
        image = _filter_axis(image, SYM6, axis, stride=2, padding=(pad_down, pad_down))
        crop = slice(hz_pad, -hz_pad)
        image = image[:, crop] if axis == 1 else image[crop]
    return image


def _colour_matrix(key, pipe, p, labels):
    m = jnp.eye(4)
    a = jnp.asarray(LUMA_AXIS)
    luma = jnp.outer(a, a)
    if pipe.brightness > 0:
        on, k = _draw(key, "brightness", pipe.brightness, p)
        z = jnp.where(on, jax.random.normal(k), 0.0)
        b = z * pipe.brightness_std
        m = jnp.eye(4).at[:3, 3].set(b) @ m
        labels.append(z[None])
    if pipe.contrast > 0:
        on, k = _draw(key, "contrast", pipe.contrast, p)
        z = jnp.where(on, jax.random.normal(k), 0.0)
        c = jnp.exp2(z * pipe.contrast_std)
        m = jnp.diag(jnp.array([c, c, c, 1.0])) @ m
        labels.append(z[None])
    if pipe.lumaflip > 0:
        on, k = _draw(key, "lumaflip", pipe.lumaflip, p)
        flip = (on & (jax.random.randint(k, (), 0, 2) == 1)).astype(jnp.float32)
        m = (jnp.eye(4) - 2 * luma * flip) @ m
        labels.append(flip[None])
    if pipe.hue > 0:
        on, k = _draw(key, "hue", pipe.hue, p)
        theta = jax.random.uniform(k, minval=-1.0, maxval=1.0) * (math.pi * pipe.hue_max)
        theta = jnp.where(on, theta, 0.0)
        m = _rotate3d(a, theta) @ m
        labels.append(jnp.stack([jnp.cos(theta) - 1, jnp.sin(theta)]))
    if pipe.saturation > 0:
        on, k = _draw(key, "saturation", pipe.saturation, p)
        z = jnp.where(on, jax.random.normal(k), 0.0)
        m = (luma + (jnp.eye(4) - luma) * jnp.exp2(z * pipe.saturation_std)) @ m
        labels.append(z[None])
    return m


def _apply_colour(image, m):
    if image.shape[-1] == 3:
        return image @ m[:3, :3].T + m[:3, 3]
    if image.shape[-1] == 1:  # EDM: the mean of the three rows acts on the grey value
        row = jnp.mean(m[:3, :], axis=0)
        return image * jnp.sum(row[:3]) + row[3]
    raise ValueError("colour augmentation needs RGB (3 channels) or grey (1 channel) images")


def augment_image(
    image: jax.Array, key: jax.Array, p: float, pipe: AugmentPipe = EDM_RECIPE
) -> tuple[jax.Array, jax.Array]:
    """(augmented image [H,W,C], labels [pipe.label_dim]) for one image and its key."""
    labels: list[jax.Array] = []
    image = _blit(image, key, pipe, p, labels)
    if pipe.geometric:
        g_inv = _geometric_matrix(key, pipe, p, image.shape[0], image.shape[1], labels)
        image = _warp(image, g_inv)
    if pipe.colour:
        image = _apply_colour(image, _colour_matrix(key, pipe, p, labels))
    return image, (jnp.concatenate(labels) if labels else jnp.zeros((0,)))


def augment_batch(
    images: jax.Array, keys: jax.Array, p: float, pipe: AugmentPipe = EDM_RECIPE
) -> tuple[jax.Array, jax.Array]:
    """augment_image over a batch: images [B,H,W,C], keys [B] -> ([B,H,W,C], [B, label_dim])."""
    return jax.vmap(lambda x, k: augment_image(x, k, p, pipe))(images, keys)


def pipeline(data: Config) -> AugmentPipe:
    """The run's augmentation pipeline (data.augment_pipe, applied with probability augment_p)."""
    return RECIPES[data.augment_pipe]


def label_width(data: Config) -> int:
    """How many augment labels the network takes: the pipeline's, or 0 with augmentation off."""
    return pipeline(data).label_dim if data.augment_p else 0


def check_config(data: Config) -> None:
    """config.data's augmentation fields (augment_p, augment_pipe), each named (ValueError)."""
    need(0 <= data.augment_p <= 1, "data.augment_p", "must lie in [0, 1] (0 = off)")
    need(
        data.augment_pipe in RECIPES,
        "data.augment_pipe",
        f"must be one of {sorted(RECIPES)}",
    )
