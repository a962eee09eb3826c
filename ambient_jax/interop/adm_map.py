"""EDM's DhariwalUNet (ADM; Karras et al. 2022, NVlabs/edm training/networks.py) against ours
(ambient_jax.nets.dhariwal), both directions.

Our modules carry EDM's names, so the map is a rule, not a table: our parameter
`a/b/Conv_0/kernel` is EDM's tensor `a.b.weight` (a convolution, [O, I, kh, kw] in EDM, [kh, kw,
I, O] in ours), `a/kernel` is `a.weight` (a linear layer, [O, I] against [I, O]), `a/scale` is
`a.weight` (a GroupNorm), and every `bias` keeps its name. qkv's interleaved channels are read by
our attention in EDM's order, so they need no permutation. The resampling filters EDM keeps as
buffers (`conv0` and `skip` of each `_down` and `_up` block) must be the box filter [1, 1] that
this network uses. Every tensor of the file is used exactly once, or the conversion is refused.
"""

import re
from typing import Any

import jax
import numpy as np

from ambient_jax.interop.unet_map import refuse, refuse_leftovers, resample_buffer
from ambient_jax.types import PyTree

# The modules whose EDM Conv2d resamples, and so holds a resample_filter buffer
RESAMPLING = re.compile(r"(enc|dec)\.\d+x\d+_(down|up)\.(conv0|skip)$")


def edm_name(path: tuple[str, ...]) -> str:
    """EDM's tensor name for our parameter at `path` (under "params")."""
    *modules, leaf = [p for p in path if p != "Conv_0"]
    return ".".join(modules) + "." + ("bias" if leaf == "bias" else "weight")


def to_edm(value: Any) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value.T if value.ndim == 2 else value


def from_edm(value: Any) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def _paths(shapes: PyTree) -> list[tuple[tuple[str, ...], Any]]:
    return [
        (tuple(str(k.key) for k in keys), leaf)
        for keys, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"])
    ]


def resampling_modules(shapes: PyTree) -> list[str]:
    """EDM's names of the modules that resample (their filter is a buffer in EDM's layout), from
    our blocks: each `_down` / `_up` block's conv0 and skip."""
    blocks = sorted({path[0] for path, _ in _paths(shapes) if re.search(r"_(down|up)$", path[0])})
    return [f"{block}.{part}" for block in blocks for part in ("conv0", "skip")]


def flax_params(tensors: dict[str, Any], shapes: PyTree, path: str = "snapshot") -> PyTree:
    """The network's tensors as our DhariwalUNet's parameter tree, shaped like `shapes` (our
    network's, from jax.eval_shape); SnapshotError naming a tensor that is missing, has another
    shape, or is left over."""
    used: set[str] = set()
    params: dict[str, Any] = {}
    for keys, want in _paths(shapes):
        name = edm_name(keys)
        if name not in tensors:
            raise refuse(path, f"the tensor {name} is missing from its network")
        value = from_edm(tensors[name])
        if value.shape != tuple(want.shape):
            raise refuse(
                path,
                f"its tensor {name} has shape {to_edm(value).shape}, the network its arguments "
                f"describe takes {to_edm(np.zeros(want.shape)).shape}",
            )
        node = params
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        used.add(name)
    box = resample_buffer((1, 1))
    for module in resampling_modules(shapes):
        name = module + ".resample_filter"
        if name not in tensors:
            raise refuse(path, f"the tensor {name} is missing from its network")
        got = np.asarray(tensors[name], np.float32)
        if got.shape != box.shape or not np.allclose(got, box, rtol=0, atol=1e-7):
            raise refuse(path, f"{name} is not the box filter [1, 1] of EDM's DhariwalUNet")
        used.add(name)
    refuse_leftovers(path, tensors, used)
    return {"params": params}


def edm_state_dict(params: PyTree, prefix: str = "model.") -> dict[str, np.ndarray]:
    """The inverse of flax_params: our DhariwalUNet's parameters and the resampling buffers under
    EDM's names, each with `prefix` (the preconditioning holds the network as `model`)."""
    out = {prefix + edm_name(keys): to_edm(value) for keys, value in _paths(params)}
    for module in resampling_modules(params):
        out[prefix + module + ".resample_filter"] = resample_buffer((1, 1))
    return {name: np.ascontiguousarray(value) for name, value in out.items()}
