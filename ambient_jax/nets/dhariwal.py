"""ADM, the U-Net of Dhariwal and Nichol ("Diffusion models beat GANs on image synthesis", 2021) as
EDM reimplements it ("DhariwalUNet", Karras et al. 2022, networks.py), in Flax linen, NHWC.

What sets it apart from the DDPM++ / NCSN++ U-Net (ambient_jax.nets.unet):
  noise embedding: positional, endpoint=False, cos before sin, model_channels wide -> 2-layer MLP;
      the class labels enter after the MLP (a bias-free linear layer), then SiLU;
  residual block: GroupNorm eps 1e-5; the embedding gives a scale AND a shift
      (silu(shift + norm1(h) * (scale + 1))); no sqrt(1/2) skip scale; an up/down block whose
      width does not change resamples its skip path without a convolution;
  attention: multi-head, 64 channels per head, at every block of an attention resolution
      (encoder and decoder), qkv channels interleaved per head as EDM's reshape reads them;
  encoder: every block's output (the first convolution and the down blocks too) is a skip.

The modules carry EDM's names (`enc.16x16_block0`, `conv0`, `norm2`, `qkv`, ...), so a converted
snapshot's tensor `enc.16x16_block0.conv0.weight` is our parameter
`enc.16x16_block0/conv0/Conv_0/kernel` (ambient_jax.interop.edm). Up/down sampling uses the box
filter [1, 1], as EDM's does for this network.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ambient_jax.nets.unet import Conv, check_image_size, group_norm, xavier_init

EPSILON = 1e-5  # EDM's UNetBlock default; SongUNet passes 1e-6


def adm_positional_embedding(
    noise_labels: jax.Array, channels: int, max_positions: int = 10000
) -> jax.Array:
    """EDM's PositionalEmbedding(endpoint=False): [cos, sin] of the labels times
    (1 / max_positions)^(k / (channels / 2)), k = 0 .. channels / 2 - 1."""
    half = channels // 2
    freqs = (1.0 / max_positions) ** (jnp.arange(half, dtype=jnp.float32) / half)
    angles = noise_labels.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def attention(x: jax.Array, heads: int, dtype: Any) -> jax.Array:
    """EDM's UNetBlock attention with `heads` heads, its modules (norm2, qkv, proj) created in the
    calling block: qkv (a 1x1 conv) channel h * 3 d + c * 3 + j is channel c of head h of q
    (j = 0), k (1) or v (2), d = channels / heads."""
    b, height, width, c = x.shape
    d = c // heads
    qkv = Conv(3 * c, 1, dtype=dtype, init_scale=np.sqrt(0.2), name="qkv")(
        group_norm(c, dtype, EPSILON, name="norm2")(x)
    )
    qkv = qkv.reshape(b, height * width, heads, d, 3)
    q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]  # [B, HW, heads, d]
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k).astype(jnp.float32) / np.sqrt(d)
    weights = jax.nn.softmax(logits, axis=-1)
    a = jnp.einsum("bhqk,bkhc->bqhc", weights.astype(v.dtype), v)
    return Conv(c, 1, init_scale=1e-5, dtype=dtype, name="proj")(a.reshape(b, height, width, c))


class DhariwalBlock(nn.Module):
    """EDM's UNetBlock as DhariwalUNet builds it (adaptive scale, skip scale 1, eps 1e-5)."""

    features: int
    up: bool = False
    down: bool = False
    heads: int = 0  # 0: no attention
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        resample = dict(up=self.up, down=self.down, dtype=self.dtype)
        orig = x
        h = group_norm(x.shape[-1], self.dtype, EPSILON, name="norm0")(x)
        h = Conv(self.features, 3, **resample, name="conv0")(nn.silu(h))
        params = nn.Dense(
            2 * self.features,
            kernel_init=xavier_init(),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="affine",
        )(emb)[:, None, None, :].astype(h.dtype)
        scale, shift = jnp.split(params, 2, axis=-1)
        h = group_norm(self.features, self.dtype, EPSILON, name="norm1")(h)
        h = nn.silu(shift + h * (scale + 1))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.features, 3, init_scale=1e-5, dtype=self.dtype, name="conv1")(h)
        if self.features != x.shape[-1]:
            orig = Conv(self.features, 1, **resample, name="skip")(orig)
        elif self.up or self.down:  # EDM's kernel-0 skip: the resampling alone, no weights
            orig = Conv(self.features, 0, **resample, name="skip")(orig)
        x = h + orig
        if self.heads:
            x = attention(x, self.heads, self.dtype) + x
        return x


class DhariwalUNet(nn.Module):
    """F(x_in [B,H,W,C], c_noise [B]) -> [B,H,W,out_channels]; see the module docstring. The
    defaults are EDM's (ADM at ImageNet 64x64: 192 channels, mults 1,2,3,4, 3 blocks, attention
    at 32, 16 and 8)."""

    out_channels: int
    model_channels: int = 192
    channel_mult: Sequence[int] = (1, 2, 3, 4)
    channel_mult_emb: int = 4
    num_blocks: int = 3
    attn_resolutions: Sequence[int] = (32, 16, 8)
    dropout: float = 0.10
    channels_per_head: int = 64
    # > 0: a class-conditional network (one-hot labels, EDM's map_label); None = zeros
    label_dim: int = 0
    # > 0: EDM's augment-label input (map_augment) for that many labels
    augment_dim: int = 0
    compute_dtype: str = "float32"
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
        dtype = jnp.dtype(self.compute_dtype)
        resolution = x.shape[1]
        check_image_size("DhariwalUNet", x, self.channel_mult)
        mc = self.model_channels
        dense = lambda n, name, bias=True: nn.Dense(
            n, use_bias=bias, kernel_init=xavier_init(), bias_init=nn.initializers.zeros, name=name
        )
        emb = adm_positional_embedding(noise_labels, mc)
        if self.augment_dim:
            if augment_labels is None:
                augment_labels = jnp.zeros((x.shape[0], self.augment_dim), emb.dtype)
            emb = emb + dense(mc, "map_augment", bias=False)(augment_labels)
        emb = nn.silu(dense(mc * self.channel_mult_emb, "map_layer0")(emb))
        emb = dense(mc * self.channel_mult_emb, "map_layer1")(emb)
        if self.label_dim:
            if class_labels is None:
                class_labels = jnp.zeros((x.shape[0], self.label_dim), emb.dtype)
            map_label = dense(mc * self.channel_mult_emb, "map_label", bias=False)
            emb = emb + map_label(class_labels.astype(emb.dtype))
        emb = nn.silu(emb).astype(dtype)

        block_cls = nn.remat(DhariwalBlock, static_argnums=(3,)) if self.remat else DhariwalBlock

        def block(name, features, attention=False, **kw):
            heads = features // self.channels_per_head if attention else 0
            return block_cls(
                features, heads=heads, dropout=self.dropout, dtype=dtype, name=name, **kw
            )

        x = x.astype(dtype)
        skips = []
        for level, mult in enumerate(self.channel_mult):
            res = resolution >> level
            if level == 0:
                x = Conv(mc * mult, 3, dtype=dtype, name=f"enc.{res}x{res}_conv")(x)
            else:
                x = block(f"enc.{res}x{res}_down", x.shape[-1], down=True)(x, emb, train)
            skips.append(x)
            for idx in range(self.num_blocks):
                attention = res in self.attn_resolutions
                x = block(f"enc.{res}x{res}_block{idx}", mc * mult, attention)(x, emb, train)
                skips.append(x)
        for level in reversed(range(len(self.channel_mult))):
            res, mult = resolution >> level, self.channel_mult[level]
            if level == len(self.channel_mult) - 1:
                x = block(f"dec.{res}x{res}_in0", x.shape[-1], True)(x, emb, train)
                x = block(f"dec.{res}x{res}_in1", x.shape[-1])(x, emb, train)
            else:
                x = block(f"dec.{res}x{res}_up", x.shape[-1], up=True)(x, emb, train)
            for idx in range(self.num_blocks + 1):
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                attention = res in self.attn_resolutions
                x = block(f"dec.{res}x{res}_block{idx}", mc * mult, attention)(x, emb, train)
        x = nn.silu(group_norm(x.shape[-1], dtype, EPSILON, name="out_norm")(x))
        out = Conv(self.out_channels, 3, init_scale=1e-5, dtype=dtype, name="out_conv")(x)
        return out.astype(jnp.float32)
