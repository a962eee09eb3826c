"""A small convolutional denoiser with a bounded receptive field, for the low-noise side of a
split model (model.split_low_preset = "local_cnn").

Below a few tenths of the data scale, denoising is local: a pixel's clean value is decided by
its neighbourhood. A network that sees only a 9x9 window cannot store which training image an
input came from. A fully connected network can: trained well at low noise on 100 images, it
replays them, because the probability-flow ODE of the exact empirical denoiser ends on a
training image from any starting point. With the identity decided above the split by a network
trained on noisy copies alone (the ambient objective), a local low-noise network keeps the
decision.

    h = Conv3(x); num_layers times: h = h + Conv3(SiLU(LN(h)) + Dense(emb)); out =
    Conv3(SiLU(LN(h)))
receptive field 2 (num_layers + 2) + 1 pixels (LN normalises each pixel over its channels: a
GroupNorm's image-wide statistics would let every output see the whole image); emb =
MLP(positional(c_noise)); the last conv starts
near zero (EDM's init), so D starts at c_skip x.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ambient_jax.nets.unet import positional_embedding, xavier_init


class LocalCNN(nn.Module):
    """F(x_in [B,H,W,C], c_noise [B]) -> [B,H,W,out_channels] from 3x3 convolutions only."""

    out_channels: int
    channels: int = 16
    num_layers: int = 2
    emb_channels: int = 64
    dropout: float = 0.0
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, train: bool = False) -> jax.Array:
        dtype = jnp.dtype(self.compute_dtype)
        conv = lambda n, scale=1.0: nn.Conv(n, (3, 3), kernel_init=xavier_init(scale), dtype=dtype)
        emb = positional_embedding(noise_labels, self.emb_channels)
        emb = nn.silu(nn.Dense(self.emb_channels, dtype=dtype)(emb))
        h = conv(self.channels)(x)
        for _ in range(self.num_layers):
            r = nn.silu(nn.LayerNorm(dtype=dtype)(h))
            r = r + nn.Dense(self.channels, dtype=dtype)(emb)[:, None, None, :]
            r = nn.Dropout(self.dropout, deterministic=not train)(r)
            h = h + conv(self.channels)(r)
        out = conv(self.out_channels, 1e-5)(nn.silu(nn.LayerNorm(dtype=dtype)(h)))
        return out.astype(jnp.float32)
