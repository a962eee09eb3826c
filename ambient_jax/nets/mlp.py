"""A residual MLP score network for low-resolution CPU experiments.

On 2 CPU cores a convolutional U-Net is too slow per parameter to reach the memorization
regime in minutes (a 0.2M-parameter U-Net ran 0.21 s per step at batch 64); a wide MLP over
the flattened image is cheap per FLOP and has the capacity to memorize a few hundred 16x16
images, which is what the quickstart and the CPU reproduction need to show the effect. Being
fully connected it is also global at every noise level: see ambient_jax.nets.local_cnn for why
the ambient default pairs it with a local network below sigma_tn.

    h = Dense(flatten(x));  for each block: h = h + Dense(SiLU(Dense(SiLU(LN(h)) + emb)))
    out = Dense(SiLU(LN(h))) reshaped to the image; emb = MLP(positional(c_noise)).
The last layer starts near zero (EDM's "init_zero"), so F starts at ~0 and D at c_skip x.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ambient_jax.nets.unet import positional_embedding, xavier_init


class ResidualMLP(nn.Module):
    """F(x_in [B,H,W,C], c_noise [B]) -> [B,H,W,out_channels]."""

    out_channels: int
    width: int = 1024
    num_blocks: int = 2
    emb_channels: int = 256
    dropout: float = 0.0
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, train: bool = False) -> jax.Array:
        dtype = jnp.dtype(self.compute_dtype)
        b, height, width, _ = x.shape
        dense = lambda n, scale=1.0: nn.Dense(
            n, kernel_init=xavier_init(scale), bias_init=nn.initializers.zeros, dtype=dtype
        )
        emb = positional_embedding(noise_labels, self.emb_channels)
        emb = nn.silu(dense(self.emb_channels)(emb))
        emb = nn.silu(dense(self.emb_channels)(emb))
        h = dense(self.width)(x.reshape(b, -1))
        for _ in range(self.num_blocks):
            r = dense(self.width)(nn.silu(nn.LayerNorm(dtype=dtype)(h)))
            r = nn.silu(r + dense(self.width)(emb))
            r = nn.Dropout(self.dropout, deterministic=not train)(r)
            h = h + dense(self.width)(r)
        out = dense(height * width * self.out_channels, 1e-5)(nn.silu(nn.LayerNorm(dtype=dtype)(h)))
        return out.reshape(b, height, width, self.out_channels).astype(jnp.float32)
