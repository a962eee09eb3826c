"""The DDPM++ / NCSN++ U-Net family of EDM ("SongUNet", Karras et al. 2022, networks.py), in Flax
linen.

Layout follows EDM's SongUNet, NHWC:
  noise embedding (positional for DDPM++, Fourier for NCSN++) -> 2-layer MLP (emb = 4 x channels);
  encoder: 3x3 conv, then per level [down block] + num_blocks residual blocks
           (attention at `attn_resolutions`); NCSN++ adds a residual path from the input
           ("encoder_type='residual'");
  decoder: two bottleneck blocks (the first with attention), then per level [up block] +
           num_blocks + 1 blocks on concatenated skips; GroupNorm -> SiLU -> 3x3 conv out.
  Residual block: GN -> SiLU -> conv3 (resample) -> + emb affine -> GN -> SiLU -> dropout ->
           conv3 (init ~ 0) -> + skip, times sqrt(1/2); optional single-head self-attention.
Up/down sampling uses the fixed FIR filter `resample_filter` ([1,1] box for DDPM++,
[1,3,3,1] for NCSN++), as EDM does; filters are constants, not parameters.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def xavier_init(scale: float = 1.0) -> Callable[..., jax.Array]:
    """EDM's xavier_uniform init times `scale` (1e-5 for the "zero" init, sqrt(0.2) for
    attention)."""
    base = nn.initializers.xavier_uniform()
    return lambda key, shape, dtype=jnp.float32: base(key, shape, dtype) * scale


def group_norm(
    channels: int, dtype: Any = None, epsilon: float = 1e-6, name: str | None = None
) -> nn.GroupNorm:
    """EDM's GroupNorm: min(32, C // 4) groups, eps 1e-6 as SongUNet sets it (EDM's default, 1e-5,
    in DhariwalUNet); statistics in float32 for any dtype."""
    return nn.GroupNorm(num_groups=min(32, channels // 4), epsilon=epsilon, dtype=dtype, name=name)


def check_image_size(network: str, x: jax.Array, channel_mult: Sequence[int]) -> None:
    """ValueError unless the images [B, H, W, C] are square with a side that halves at every
    level of the U-Net."""
    if x.shape[1] != x.shape[2] or x.shape[1] % (2 ** (len(channel_mult) - 1)):
        raise ValueError(
            f"{network} needs square images whose side divides by 2^(levels-1); got "
            f"{x.shape[1:3]} with channel_mult {tuple(channel_mult)}"
        )


def _fir(resample_filter):
    f = np.asarray(resample_filter, np.float32)
    f = np.outer(f, f)
    return f / f.sum()


# XLA's CPU backend runs the depthwise (one channel per group) convolutions of the FIR resampling
# far below its dense-convolution speed; there the same filters run as sums of shifted, strided
# views of the input, which XLA fuses into one loop. Other backends keep the convolutions.
SHIFTED_RESAMPLING_ON_CPU = True


def _shifted_views():
    return SHIFTED_RESAMPLING_ON_CPU and jax.default_backend() == "cpu"


# The residual encoder's convolution before its FIR downsampling is padded by more than
# kernel // 2 (by 2 for a 3x3 kernel with the [1,3,3,1] filter). XLA's CPU backend computes the
# filter gradient of such a convolution about 100x slower than that of the same convolution on
# an input zero-padded beforehand (1.8 s against 14-18 ms at 128->256 channels, 32x32, batch 4,
# on a 2-core AMD EPYC): on the CPU the extra padding is a separate jnp.pad. Other backends keep
# the padded convolution.
EXPLICIT_PADDING_ON_CPU = True


def _explicit_padding():
    return EXPLICIT_PADDING_ON_CPU and jax.default_backend() == "cpu"


def _taps(resample_filter):
    """The 1-D filter whose outer product with itself is _fir(resample_filter)."""
    g = np.asarray(resample_filter, np.float64)
    return (g / g.sum()).tolist()


def _filter_axis(x, taps, axis, stride, pad):
    """sum_k taps[k] x_padded[stride i + k] along `axis` (1 = H, 2 = W of NHWC), zero padding."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    x = jnp.pad(x, widths)
    n_out = (x.shape[axis] - len(taps)) // stride + 1
    out = 0
    for k, tap in enumerate(taps):
        view = jax.lax.slice_in_dim(x, k, k + stride * (n_out - 1) + 1, stride, axis)
        out = out + view * jnp.asarray(tap, x.dtype)
    return out


def _interleave_zeros(x, axis):
    """A zero after every sample but the last along `axis` (n -> 2n - 1): lhs dilation 2."""
    stacked = jnp.stack([x, jnp.zeros_like(x)], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] *= 2
    return jax.lax.slice_in_dim(stacked.reshape(shape), 0, shape[axis] - 1, axis=axis)


def fir_downsample_shifted(
    x: jax.Array, resample_filter: Sequence[float], padding: int
) -> jax.Array:
    """fir_downsample as shifted views: the separable filter along H, then W, stride 2."""
    taps = _taps(resample_filter)
    for axis in (1, 2):
        x = _filter_axis(x, taps, axis, 2, padding)
    return x


def fir_upsample_shifted(x: jax.Array, resample_filter: Sequence[float], padding: int) -> jax.Array:
    """fir_upsample as shifted views: zeros interleaved, then twice the separable filter."""
    taps = [2 * t for t in _taps(resample_filter)]  # outer product: 4 x the 2-D filter
    for axis in (1, 2):
        x = _filter_axis(_interleave_zeros(x, axis), taps, axis, 1, len(taps) - 1 - padding)
    return x


def fir_downsample(x: jax.Array, resample_filter: Sequence[float], padding: int) -> jax.Array:
    """Depthwise FIR filter with stride 2 (EDM Conv2d(down=True) without weights)."""
    resample = fir_downsample_shifted if _shifted_views() else fir_downsample_conv
    return resample(x, resample_filter, padding)


def fir_upsample(x: jax.Array, resample_filter: Sequence[float], padding: int) -> jax.Array:
    """Depthwise transposed FIR filter with stride 2 (EDM Conv2d(up=True) without weights)."""
    resample = fir_upsample_shifted if _shifted_views() else fir_upsample_conv
    return resample(x, resample_filter, padding)


def fir_downsample_conv(x: jax.Array, resample_filter: Sequence[float], padding: int) -> jax.Array:
    """fir_downsample as one depthwise convolution."""
    f = _fir(resample_filter)
    channels = x.shape[-1]
    kernel = jnp.tile(jnp.asarray(f)[:, :, None, None], (1, 1, 1, channels)).astype(x.dtype)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (2, 2),
        [(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def fir_upsample_conv(x: jax.Array, resample_filter: Sequence[float], padding: int) -> jax.Array:
    """fir_upsample as one depthwise convolution of the input with zeros interleaved."""
    f = _fir(resample_filter) * 4.0
    channels = x.shape[-1]
    kernel = jnp.tile(jnp.asarray(f)[:, :, None, None], (1, 1, 1, channels)).astype(x.dtype)
    k = f.shape[0]
    # conv_transpose2d(stride 2, padding p) == dilated-input conv with padding k - 1 - p
    # (the filter is symmetric, so no flip is needed).
    pad = k - 1 - padding
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        [(pad, pad)] * 2,
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


class Conv(nn.Module):
    """EDM's Conv2d: optional FIR up/down resampling followed by a kernel x kernel conv."""

    features: int
    kernel: int = 3
    up: bool = False
    down: bool = False
    fused_resample: bool = False
    resample_filter: Sequence[int] = (1, 1)
    init_scale: float = 1.0
    dtype: Any = None  # compute dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        f_pad = (len(self.resample_filter) - 1) // 2
        w_pad = self.kernel // 2
        conv = lambda pad: nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            padding=[(pad, pad)] * 2,
            kernel_init=xavier_init(self.init_scale),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
        )
        if self.fused_resample and self.down and self.kernel:
            if _explicit_padding():  # see EXPLICIT_PADDING_ON_CPU
                x = jnp.pad(x, ((0, 0), (f_pad, f_pad), (f_pad, f_pad), (0, 0)))
                x = conv(w_pad)(x)
            else:
                x = conv(w_pad + f_pad)(x)
            return fir_downsample(x, self.resample_filter, 0)
        if self.up:
            x = fir_upsample(x, self.resample_filter, f_pad)
        if self.down:
            x = fir_downsample(x, self.resample_filter, f_pad)
        if self.kernel:
            x = conv(w_pad)(x)
        return x


class UNetBlock(nn.Module):
    """EDM's UNetBlock with adaptive_scale=False, skip_scale=sqrt(1/2), resample_proj=True."""

    features: int
    up: bool = False
    down: bool = False
    attention: bool = False
    dropout: float = 0.0
    resample_filter: Sequence[int] = (1, 1)
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        skip_scale = float(np.sqrt(0.5))  # a Python float keeps bf16 activations bf16
        orig = x
        res = dict(
            up=self.up, down=self.down, resample_filter=self.resample_filter, dtype=self.dtype
        )
        h = Conv(self.features, 3, **res)(nn.silu(group_norm(x.shape[-1], self.dtype)(x)))
        shift = nn.Dense(
            self.features,
            kernel_init=xavier_init(),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
        )(emb)
        h = nn.silu(
            group_norm(self.features, self.dtype)(h + shift[:, None, None, :].astype(h.dtype))
        )
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.features, 3, init_scale=1e-5, dtype=self.dtype)(h)
        if self.features != x.shape[-1] or self.up or self.down:
            orig = Conv(self.features, 1, **res)(orig)
        x = (h + orig) * skip_scale
        if self.attention:
            x = (SelfAttention(self.features, self.dtype)(x) + x) * skip_scale
        return x


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions (EDM UNetBlock, num_heads=1)."""

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        dense = lambda n, scale: nn.Dense(
            n, kernel_init=xavier_init(scale), bias_init=nn.initializers.zeros, dtype=self.dtype
        )
        qkv = dense(3 * c, np.sqrt(0.2))(group_norm(c, self.dtype)(x))
        q, k, v = jnp.split(qkv.reshape(b, height * width, 3 * c), 3, axis=-1)
        weights = jax.nn.softmax(
            jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / np.sqrt(c), axis=-1
        )
        a = jnp.einsum("bqk,bkc->bqc", weights.astype(v.dtype), v).reshape(b, height, width, c)
        return dense(c, 1e-5)(a)


def positional_embedding(
    noise_labels: jax.Array, channels: int, max_positions: int = 10000
) -> jax.Array:
    """EDM's PositionalEmbedding(endpoint=True), with the sin/cos halves swapped as SongUNet
    does."""
    half = channels // 2
    freqs = (1.0 / max_positions) ** (jnp.arange(half, dtype=jnp.float32) / (half - 1))
    angles = noise_labels.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def fourier_embedding(
    noise_labels: jax.Array,
    channels: int,
    scale: float = 16.0,
    seed: int = 0,
    freqs: Sequence[float] = (),
) -> jax.Array:
    """EDM's FourierEmbedding: random frequencies fixed at construction (a constant, not a
    parameter); `freqs` the ones a converted network was trained with (its `map_noise.freqs`
    buffer), else drawn from `seed`."""
    if freqs:
        table = np.asarray(freqs, np.float32)
        if table.shape != (channels // 2,):
            raise ValueError(
                f"fourier_freqs has {table.size} frequencies; the embedding of {channels} "
                f"channels takes {channels // 2}"
            )
    else:
        table = np.random.RandomState(seed).randn(channels // 2).astype(np.float32) * scale
    angles = noise_labels.astype(jnp.float32)[:, None] * (2 * np.pi * table)[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class SongUNet(nn.Module):
    """F(x_in [B,H,W,C], c_noise [B]) -> [B,H,W,out_channels]; see the module docstring."""

    out_channels: int
    model_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.10
    embedding_type: str = "positional"  # "positional" (DDPM++) | "fourier" (NCSN++)
    channel_mult_noise: int = 1
    encoder_type: str = "standard"  # "standard" (DDPM++) | "residual" (NCSN++)
    resample_filter: Sequence[int] = (1, 1)
    # NCSN++'s Fourier frequencies when they are not the seed-0 draw (a converted EDM network's
    # map_noise.freqs, ambient_jax.interop.edm); () = the draw
    fourier_freqs: Sequence[float] = ()
    # > 0: a class-conditional network (EDM's map_label: one-hot class labels into the noise
    # embedding); sampled with labels, see diffusion.generate
    label_dim: int = 0
    # > 0: EDM's augment-label input (map_augment, a bias-free linear layer into the noise
    # embedding) for that many labels (ambient_jax.data.augment; 9 for EDM's recipe)
    augment_dim: int = 0
    # bfloat16: convolutions and matmuls in bf16, parameters and norms' statistics f32
    compute_dtype: str = "float32"
    # recompute each block's activations in the backward pass (less memory, more FLOPs)
    remat: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        noise_labels: jax.Array,
        train: bool = False,
        augment_labels: jax.Array | None = None,
        class_labels: jax.Array | None = None,
    ) -> jax.Array:
        """augment_labels [B, augment_dim]: what augmentation did to x; None = zeros (sampling).
        class_labels [B, label_dim] (one-hot) for a class-conditional network; None = zeros."""
        dtype = jnp.dtype(self.compute_dtype)
        resolution = x.shape[1]
        check_image_size("SongUNet", x, self.channel_mult)
        noise_channels = self.model_channels * self.channel_mult_noise
        emb_channels = self.model_channels * self.channel_mult_emb
        if self.embedding_type == "positional":
            emb = positional_embedding(noise_labels, noise_channels)
        elif self.embedding_type == "fourier":
            emb = fourier_embedding(noise_labels, noise_channels, freqs=self.fourier_freqs)
        else:
            raise ValueError(
                f"embedding_type must be 'positional' or 'fourier', got {self.embedding_type!r}"
            )
        if self.label_dim:  # EDM scales the one-hot labels by sqrt(label_dim)
            if class_labels is None:
                class_labels = jnp.zeros((x.shape[0], self.label_dim), emb.dtype)
            map_label = nn.Dense(noise_channels, kernel_init=xavier_init(), name="map_label")
            emb = emb + map_label(class_labels.astype(emb.dtype) * float(np.sqrt(self.label_dim)))
        if self.augment_dim:  # zero labels add nothing: the sampler's un-augmented images
            if augment_labels is None:
                augment_labels = jnp.zeros((x.shape[0], self.augment_dim), emb.dtype)
            map_augment = nn.Dense(
                noise_channels, use_bias=False, kernel_init=xavier_init(), name="map_augment"
            )
            emb = emb + map_augment(augment_labels)
        dense = lambda n: nn.Dense(n, kernel_init=xavier_init(), bias_init=nn.initializers.zeros)
        emb = nn.silu(dense(emb_channels)(emb))
        emb = nn.silu(dense(emb_channels)(emb)).astype(dtype)

        # Explicit names keep the parameter tree the same with and without remat.
        block_cls = nn.remat(UNetBlock, static_argnums=(3,)) if self.remat else UNetBlock
        count = iter(range(1000))
        block = lambda features, **kw: block_cls(
            features,
            dropout=self.dropout,
            resample_filter=tuple(self.resample_filter),
            dtype=dtype,
            name=f"UNetBlock_{next(count)}",
            **kw,
        )
        x = x.astype(dtype)
        aux = x
        skips = []
        for level, mult in enumerate(self.channel_mult):
            res = resolution >> level
            if level == 0:
                x = Conv(self.model_channels, 3, dtype=dtype)(x)
            else:
                x = block(x.shape[-1], down=True)(x, emb, train)
                if self.encoder_type == "residual":
                    aux_conv = Conv(
                        x.shape[-1],
                        3,
                        down=True,
                        fused_resample=True,
                        resample_filter=tuple(self.resample_filter),
                        dtype=dtype,
                    )
                    x = aux = (x + aux_conv(aux)) / float(np.sqrt(2))
            skips.append(x)
            for _ in range(self.num_blocks):
                x = block(self.model_channels * mult, attention=res in self.attn_resolutions)(
                    x, emb, train
                )
                skips.append(x)

        for level in reversed(range(len(self.channel_mult))):
            mult = self.channel_mult[level]
            res = resolution >> level
            if level == len(self.channel_mult) - 1:
                x = block(x.shape[-1], attention=True)(x, emb, train)
                x = block(x.shape[-1])(x, emb, train)
            else:
                x = block(x.shape[-1], up=True)(x, emb, train)
            for idx in range(self.num_blocks + 1):
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                attn = idx == self.num_blocks and res in self.attn_resolutions
                x = block(self.model_channels * mult, attention=attn)(x, emb, train)
        x = nn.silu(group_norm(x.shape[-1], dtype)(x))
        return Conv(self.out_channels, 3, init_scale=1e-5, dtype=dtype)(x).astype(jnp.float32)
