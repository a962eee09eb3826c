"""Score networks chosen by name.

Every network is a Flax linen module F(x_in [B,H,W,C], c_noise [B], train) -> [B,H,W,C]; the
EDM preconditioning (ambient_jax.diffusion.precond) turns it into a denoiser. Presets:

  tiny            small DDPM++ U-Net for tests and CPU runs (16x16 or 32x32)
  unet_digits     DDPM++ U-Net for the embedded 16x16 digits on a CPU (32 channels, levels 16/8/4,
                  attention at 4x4, about 1.26M parameters; docs/ambient_quality.md, section 6)
  unet_digits32   the same blocks for the digits at their own 28x28 (padded to 32x32): levels
                  32/16/8/4, attention at 4x4; local for longer relative to the image
  ddpmpp_cifar10  EDM's DDPM++ for CIFAR-10 32x32 (about 55.7M parameters)
  ncsnpp_cifar10  EDM's NCSN++ for CIFAR-10 32x32 (about 56.4M parameters)
  ncsnpp_ffhq64   the paper's FFHQ-64 NCSN++ (channel_mult [1,2,2,2], dropout 0.05, about 62.8M)
  adm_imagenet64  EDM's ADM (DhariwalUNet) for ImageNet 64x64: 192 channels, mults 1,2,3,4,
                  3 blocks, attention at 32/16/8 (about 296M parameters with 1000 classes)
  mlp_small       residual MLP denoiser for low-resolution CPU experiments
  local_cnn       small 3x3-conv denoiser with a 9x9 receptive field (the low-noise side of a split
  model)
"""

import dataclasses
import typing
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ambient_jax.checks import need, need_each
from ambient_jax.diffusion.precond import PRECONDS
from ambient_jax.nets.dhariwal import DhariwalUNet
from ambient_jax.nets.local_cnn import LocalCNN
from ambient_jax.nets.mlp import ResidualMLP
from ambient_jax.nets.unet import SongUNet
from ambient_jax.types import Config, PyTree

_DDPMPP = dict(
    model_channels=128,
    channel_mult=(2, 2, 2),
    num_blocks=4,
    attn_resolutions=(16,),
    embedding_type="positional",
    channel_mult_noise=1,
    encoder_type="standard",
    resample_filter=(1, 1),
)
_NCSNPP = dict(
    _DDPMPP,
    embedding_type="fourier",
    channel_mult_noise=2,
    encoder_type="residual",
    resample_filter=(1, 3, 3, 1),
)

PRESETS = {
    "tiny": (
        SongUNet,
        dict(
            _DDPMPP,
            model_channels=16,
            channel_mult=(1, 2),
            num_blocks=1,
            attn_resolutions=(8,),
            dropout=0.0,
        ),
    ),
    "unet_digits": (
        SongUNet,
        dict(
            _DDPMPP,
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_blocks=1,
            attn_resolutions=(4,),
            dropout=0.0,
        ),
    ),
    "unet_digits32": (
        SongUNet,
        dict(
            _DDPMPP,
            model_channels=32,
            channel_mult=(1, 2, 2, 2),
            num_blocks=1,
            attn_resolutions=(4,),
            dropout=0.0,
        ),
    ),
    "ddpmpp_cifar10": (SongUNet, dict(_DDPMPP, dropout=0.13)),
    "ncsnpp_cifar10": (SongUNet, dict(_NCSNPP, dropout=0.13)),
    "ncsnpp_ffhq64": (SongUNet, dict(_NCSNPP, channel_mult=(1, 2, 2, 2), dropout=0.05)),
    "adm_imagenet64": (DhariwalUNet, {}),
    "mlp_small": (ResidualMLP, dict(width=1024, num_blocks=2, emb_channels=256, dropout=0.0)),
    "local_cnn": (LocalCNN, dict(channels=16, num_layers=2, emb_channels=64, dropout=0.0)),
}


class SplitBySigma(nn.Module):
    """Two networks of one kind: `low` for noise levels below `boundary`, `high` at or above it
    (model.split_sigma). Each row's output comes from one of them, so each is trained only on its
    own rows: with boundary = the ambient branch's start, `high` never sees a clean image and
    shares no parameter with the network that does. Both run on every row (twice the FLOPs)."""

    low: nn.Module
    high: nn.Module
    boundary: float
    # False: training rows all lie at or above the boundary (finetune.train_above, whose loss
    # draws no row below it and whose `low` half is frozen), so training runs `high` alone
    train_low: bool = True

    @nn.compact
    def __call__(
        self, x: jax.Array, noise_labels: jax.Array, train: bool = False, **conditioning: jax.Array
    ) -> jax.Array:
        if train and not self.train_low:
            return self.high(x, noise_labels, train, **conditioning)
        above = noise_labels >= jnp.log(self.boundary) / 4.0  # EDM's c_noise = ln(sigma) / 4
        low = self.low(x, noise_labels, train, **conditioning)
        high = self.high(x, noise_labels, train, **conditioning)
        return jnp.where(above.reshape(-1, *([1] * (x.ndim - 1))), high, low)


def build_model(
    preset: str,
    out_channels: int,
    split_sigma: float = 0.0,
    low_preset: str = "",
    train_low: bool = True,
    **overrides: Any,
) -> nn.Module:
    """The linen module for `preset` with `overrides` applied to its fields (e.g. dropout=0.1);
    split_sigma > 0: two networks split at that noise level (SplitBySigma), the low-noise one of
    `low_preset` with its own defaults when given, else a second `preset` network."""
    if split_sigma:
        high = _build_one(preset, out_channels, **overrides).clone(name="high")
        if low_preset:
            shared = {k: overrides[k] for k in ("compute_dtype", "augment_dim") if k in overrides}
            low = _build_one(low_preset, out_channels, **shared).clone(name="low")
        else:
            low = _build_one(preset, out_channels, **overrides).clone(name="low")
        return SplitBySigma(low=low, high=high, boundary=float(split_sigma), train_low=train_low)
    if low_preset:
        raise ValueError("model.split_low_preset needs model.split_sigma (-1 or a noise level)")
    return _build_one(preset, out_channels, **overrides)


def _build_one(preset, out_channels, **overrides):
    """The linen module for `preset` with `overrides` applied to its fields (e.g. dropout=0.1)."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cls, fields = PRESETS[preset]
    unknown = set(overrides) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"model overrides {sorted(unknown)} are not fields of {cls.__name__} (preset "
            f"{preset!r}); "
            f"valid: {sorted(f for f in cls.__dataclass_fields__ if f not in ('parent', 'name'))}"
        )
    kwargs = dict(fields, **overrides)
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return cls(out_channels=out_channels, **kwargs)


# Set by their own config fields (model.compute_dtype, model.remat) or by the trainer.
_NOT_OVERRIDES = ("parent", "name", "out_channels", "compute_dtype", "remat", "augment_dim")


def override_fields() -> dict[str, Any]:
    """name -> type of every field that model.overrides may set, over all presets' networks."""
    fields: dict[str, Any] = {}
    for cls, _ in PRESETS.values():
        for field in dataclasses.fields(cls):
            if field.name not in _NOT_OVERRIDES:
                fields[field.name] = (
                    tuple if typing.get_origin(field.type) is not None else field.type
                )
    return fields


def init_params(model: nn.Module, image_shape: tuple[int, int, int], key: jax.Array) -> PyTree:
    """The network's variables, initialised on one zero image of `image_shape` at c_noise 0."""
    return model.init(key, jnp.zeros((1, *image_shape)), jnp.zeros((1,)))


def build_network(
    model: ml_collections.ConfigDict,
    channels: int,
    augment_dim: int = 0,
    split_boundary: float = 0.0,
    train_low: bool = True,
) -> nn.Module:
    """The network of config.model: model.preset with the model.overrides that are set (None = the
    preset's own), augment_dim augment labels as input (0 = none) and, with split_boundary > 0,
    split into two networks at that noise level (model.split_sigma, resolved by the caller:
    train_state.network); train_low=False: training runs the high-noise one alone."""
    overrides = {k: v for k, v in dict(model.overrides).items() if v is not None}
    overrides.setdefault("compute_dtype", compute_dtype(model.compute_dtype))
    if model.remat:
        overrides.setdefault("remat", True)
    if augment_dim:
        overrides["augment_dim"] = augment_dim
    return build_model(
        model.preset,
        channels,
        split_sigma=split_boundary,
        low_preset=model.split_low_preset,
        train_low=train_low,
        **overrides,
    )


def takes_augment_labels(preset: str) -> bool:
    """Whether the preset's network has EDM's augment-label input (the U-Nets)."""
    return any(field.name == "augment_dim" for field in dataclasses.fields(PRESETS[preset][0]))


def compute_dtype(name: str) -> str:
    """ "auto" -> bfloat16 on GPU/TPU (their matmul units run bf16 several times faster), else
    float32."""
    if name == "auto":
        return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    return name


def check_config(model: Config, augment_p: float) -> None:
    """config.model values no network can be built with, each named (ValueError); augment_p
    (data.augment_p) > 0 needs presets that take augment labels."""
    need(model.preset in PRESETS, "model.preset", f"must be one of {sorted(PRESETS)}")
    low = model.split_low_preset
    need(
        not low or low in PRESETS,
        "model.split_low_preset",
        f"must be '' or one of {sorted(PRESETS)}",
    )
    need(
        not low or model.split_sigma,
        "model.split_low_preset",
        "needs model.split_sigma (-1 or a level)",
    )
    for name in ("preset", "split_low_preset"):
        preset = model[name]
        need(
            not augment_p or not preset or takes_augment_labels(preset),
            f"model.{name}",
            f"{preset} has no augment-label input: data.augment_p > 0 needs a U-Net preset "
            "(tiny, ddpmpp_cifar10, ncsnpp_cifar10, ncsnpp_ffhq64)",
        )
    need(
        model.compute_dtype in ("auto", "float32", "bfloat16"),
        "model.compute_dtype",
        "must be 'auto', 'float32' or 'bfloat16'",
    )
    need_each(
        "model",
        model,
        (("split_sigma", lambda v: v >= 0 or v == -1, "must be 0 (off), -1 or a level > 0"),),
    )
    cls = PRESETS[model.preset][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    need(
        not model.remat or "remat" in fields,
        "model.remat",
        f"{cls.__name__} (model.preset {model.preset!r}) has no rematerialisation: set "
        "model.remat=False or use a U-Net preset",
    )
    for name, value in model.overrides.items():
        need(
            value is None or name in fields,
            f"model.overrides.{name}",
            f"is not a field of {cls.__name__} (model.preset {model.preset!r}): leave it unset",
        )
        if isinstance(value, int) and not isinstance(value, bool):
            need(value >= 1, f"model.overrides.{name}", f"must be >= 1, got {value}")
    kind = model.precond.kind
    need(kind in PRECONDS, "model.precond.kind", f"must be one of {PRECONDS}")
    need(
        kind == "edm" or not model.split_sigma,
        "model.split_sigma",
        f"splits at EDM's c_noise = ln(sigma) / 4: it needs model.precond.kind='edm', not {kind!r}",
    )
    need_each(
        "model.precond",
        model.precond,
        tuple(
            (name, lambda v: v > 0, "must be > 0")
            for name in ("beta_d", "beta_min", "epsilon_t", "M", "sigma_min", "sigma_max", "C_1")
        )
        + (("C_2", lambda v: v >= 0, "must be >= 0"),),
    )
    dropout = model.overrides.get("dropout")
    need(
        dropout is None or 0 <= dropout < 1,
        "model.overrides.dropout",
        f"must lie in [0, 1), got {dropout}",
    )
