"""DINOv2 ViT-S/B/L/g-14 (Oquab et al. 2023) in Flax linen: the paper's memorization embedding.

As in the original code (facebookresearch/dinov2, vision_transformer.py):
  patch embed (14x14 conv, stride 14, bias) -> [CLS, patches] + position embedding (resized
  bicubically from the stored 37x37 grid) -> (register tokens after CLS) -> blocks
  x + ls1 * attn(norm1 x), x + ls2 * mlp(norm2 x) -> final LayerNorm; output = CLS token,
  L2-normalised. LayerNorm eps 1e-6, exact (erf) GELU, qkv one linear (rows q, k, v); ViT-g uses
  SwiGLU (w12 -> split -> silu(x1) * x2 -> w3).
Position-embedding resizing, both rules of the original code (facebookresearch/dinov2):
  * models without registers: scale_factor = ((h0 + 0.1) / M, (w0 + 0.1) / M), bicubic, no
    antialias;
  * models with registers: size = (h0, w0), bicubic with antialias;
  PyTorch's kernels are reproduced exactly (`resize_matrix`): cubic A = -0.75 with border clamp,
  and for antialias the PIL-style widened cubic (A = -0.5), normalised.
Preprocessing recipes (name them in reports):
  * "paper": uint8 -> [0, 1], reflect-pad each side to a multiple of 14 (32 -> 42, 64 -> 70),
    no resize, no ImageNet normalisation (the paper's code);
  * "standard": resize to 224 (bicubic), ImageNet mean/std.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PATCH = 14
RECIPES = ("paper", "standard")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    swiglu: bool = False
    registers: int = 0
    grid: int = 37  # the stored position-embedding grid (518 / 14)


VARIANTS = {
    "vits14": ViTConfig(384, 12, 6, 1536),
    "vitb14": ViTConfig(768, 12, 12, 3072),
    "vitl14": ViTConfig(1024, 24, 16, 4096),
    "vitg14": ViTConfig(1536, 40, 24, 4096, swiglu=True),
}
VARIANTS.update(
    {f"{k}_reg": dataclasses.replace(v, registers=4) for k, v in list(VARIANTS.items())}
)


def _cubic(x, a):
    x = np.abs(x)
    return np.where(
        x <= 1,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


def resize_matrix(
    in_size: int, out_size: int, scale: float | None = None, antialias: bool = False
) -> np.ndarray:
    """The [out, in] matrix of torch.nn.functional.interpolate(mode="bicubic", align_corners=False).

    scale: the scale_factor passed to torch (coordinates use 1/scale); None: size-based (in/out).
    """
    ratio = (1.0 / scale) if scale is not None else in_size / out_size
    matrix = np.zeros((out_size, in_size), np.float64)
    if antialias:  # PIL-style: the cubic (A = -0.5), stretched by the ratio when shrinking
        stretch = max(ratio, 1.0)
        support = 2.0 * stretch
        for i in range(out_size):
            center = ratio * (i + 0.5)
            lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
            j = np.arange(lo, hi)
            w = _cubic((j - center + 0.5) / stretch, -0.5)
            matrix[i, lo:hi] = w / w.sum()
        return matrix
    for i in range(out_size):
        src = (i + 0.5) * ratio - 0.5
        base = math.floor(src)
        t = src - base
        for k, w in zip(range(-1, 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
            matrix[i, min(max(base + k, 0), in_size - 1)] += w
    return matrix


def resize_position_embedding(
    patch_pos: jax.Array, grid: int, h0: int, w0: int, registers: int
) -> jax.Array:
    """[grid*grid, C] -> [h0*w0, C] by the original code's rule for this model kind."""
    if registers:  # size=(h0, w0), antialias on
        mh, mw = resize_matrix(grid, h0, antialias=True), resize_matrix(grid, w0, antialias=True)
    else:  # scale_factor=((h0 + 0.1) / grid, ...), antialias off
        mh = resize_matrix(grid, h0, scale=(h0 + 0.1) / grid)
        mw = resize_matrix(grid, w0, scale=(w0 + 0.1) / grid)
    p = patch_pos.reshape(grid, grid, -1)
    out = jnp.einsum("ih,jw,hwc->ijc", jnp.asarray(mh, p.dtype), jnp.asarray(mw, p.dtype), p)
    return out.reshape(h0 * w0, -1)


class Block(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        b, n, width = x.shape
        head = width // c.heads
        h = nn.LayerNorm(epsilon=1e-6, name="norm1")(x)
        qkv = nn.Dense(3 * width, name="qkv")(h).reshape(b, n, 3, c.heads, head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head), axis=-1)
        attn = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, width)
        x = x + self.param("ls1", nn.initializers.ones, (width,)) * nn.Dense(width, name="proj")(
            attn
        )
        h = nn.LayerNorm(epsilon=1e-6, name="norm2")(x)
        if c.swiglu:
            x1, x2 = jnp.split(nn.Dense(2 * c.mlp_hidden, name="w12")(h), 2, axis=-1)
            h = nn.Dense(width, name="w3")(jax.nn.silu(x1) * x2)
        else:
            h = nn.Dense(width, name="fc2")(
                jax.nn.gelu(nn.Dense(c.mlp_hidden, name="fc1")(h), approximate=False)
            )
        return x + self.param("ls2", nn.initializers.ones, (width,)) * h


class DinoV2(nn.Module):
    """[B, H, W, 3] (H, W multiples of 14, preprocessed) -> L2-normalised CLS features [B,
    width]."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array, normalize: bool = True) -> jax.Array:
        c = self.config
        b, height, width, _ = x.shape
        h0, w0 = height // PATCH, width // PATCH
        x = nn.Conv(
            c.width, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID", name="patch_embed"
        )(x)
        x = x.reshape(b, h0 * w0, c.width)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, c.width))
        pos = self.param(
            "pos_embed", nn.initializers.normal(0.02), (1, c.grid * c.grid + 1, c.width)
        )
        patch_pos = (
            pos[0, 1:]
            if (h0, w0) == (c.grid, c.grid)
            else resize_position_embedding(pos[0, 1:], c.grid, h0, w0, c.registers)
        )
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.width)), x], axis=1)
        x = x + jnp.concatenate([pos[:, :1], patch_pos[None]], axis=1)
        if c.registers:
            reg = self.param(
                "register_tokens", nn.initializers.normal(1e-6), (1, c.registers, c.width)
            )
            x = jnp.concatenate(
                [x[:, :1], jnp.broadcast_to(reg, (b, c.registers, c.width)), x[:, 1:]], axis=1
            )
        for i in range(c.depth):
            x = Block(c, name=f"blocks_{i}")(x)
        cls_out = nn.LayerNorm(epsilon=1e-6, name="norm")(x)[:, 0]
        if normalize:
            cls_out = cls_out / jnp.maximum(jnp.linalg.norm(cls_out, axis=-1, keepdims=True), 1e-12)
        return cls_out


def preprocess(images_uint8: jax.Array, recipe: str) -> jax.Array:
    """uint8 [B, H, W, 3] -> the network input under a named recipe."""
    x = jnp.asarray(images_uint8, jnp.float32) / 255.0
    if recipe == "paper":
        _, height, width, _ = x.shape
        ph, pw = (-height) % PATCH, (-width) % PATCH
        return jnp.pad(
            x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect"
        )
    if recipe == "standard":
        b = x.shape[0]
        x = jax.image.resize(x, (b, 224, 224, 3), "bicubic")
        return (x - IMAGENET_MEAN) / IMAGENET_STD
    raise ValueError(f"DINOv2 recipe must be one of {RECIPES}, got {recipe!r}")
