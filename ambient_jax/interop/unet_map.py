"""EDM's SongUNet (Karras et al. 2022, NVlabs/edm training/networks.py) layer by layer against
ours (ambient_jax.nets.unet): the table both directions of the conversion read.

Names map as EDM's SongUNet builds its modules onto the order in which ours creates its own:

    map_noise.freqs (NCSN++)         -> model.overrides.fourier_freqs (a constant, not trained)
    map_label / map_augment          -> map_label, map_augment
    map_layer0 / map_layer1          -> Dense_0, Dense_1
    enc.RxR_conv, enc.RxR_aux_residual, dec.RxR_aux_conv
                                     -> Conv_0, Conv_1, ... (in that order)
    enc.RxR_down / _blockI, dec.RxR_in0 / _in1 / _up / _blockI
                                     -> UNetBlock_0, UNetBlock_1, ... (in that order)
    dec.RxR_aux_norm                 -> GroupNorm_0
    in a block: norm0 conv0 affine norm1 conv1 skip | norm2 qkv proj
                                     -> GroupNorm_0 Conv_0 Dense_0 GroupNorm_1 Conv_1 Conv_2 |
                                        SelfAttention_0/{GroupNorm_0, Dense_0, Dense_1}

Convolutions [O, I, kh, kw] become kernels [kh, kw, I, O]; linear layers [O, I] become [I, O];
EDM's attention interleaves q, k and v in its qkv channels (channel 3c + j), ours holds them as
three contiguous thirds. The resampling filters EDM stores as buffers must equal the ones the
config gives. Every tensor of the file is used exactly once, or the conversion is refused.
"""

import dataclasses
from typing import Any

import numpy as np

from ambient_jax.types import PyTree


class SnapshotError(ValueError):
    """A snapshot this project cannot represent (or not a snapshot at all)."""


def refuse(path: str, what: str) -> SnapshotError:
    return SnapshotError(f"{path}: {what}")


def refuse_leftovers(path: str, tensors: dict, used: set[str]) -> None:
    """SnapshotError naming the first tensor of the file that no parameter took."""
    left = [name for name in tensors if name not in used]
    if left:
        raise refuse(
            path,
            f"its tensor {left[0]} (and {len(left) - 1} more) has no place in "
            "the network its arguments describe",
        )


@dataclasses.dataclass(frozen=True)
class Link:
    """One layer of EDM's SongUNet and its place in ours: `kind` conv (kernel, filter buffer when
    `resample`), dense (`bias`), norm, attention (qkv and proj, `channels`) or freqs."""

    kind: str
    edm: str  # EDM's module name, e.g. enc.16x16_block0.conv0
    ours: tuple[str, ...]  # our module's path under "params"
    kernel: int = 3
    resample: bool = False
    bias: bool = True
    channels: int = 0


def layout(nk: dict) -> list[Link]:
    """Every layer of EDM's SongUNet with arguments `nk` (EDM's defaults filled in), in the order
    EDM registers them, each with the path of the same layer in our SongUNet (which creates its
    modules in the same order, numbering them per kind)."""
    links: list[Link] = []
    convs, blocks = iter(range(10_000)), iter(range(10_000))

    def conv(edm: str, kernel: int = 3, resample: bool = False) -> None:
        links.append(Link("conv", edm, (f"Conv_{next(convs)}",), kernel, resample))

    def block(edm: str, cin: int, cout: int, resample: bool, attention: bool) -> None:
        ours = (f"UNetBlock_{next(blocks)}",)
        links.append(Link("norm", edm + ".norm0", ours + ("GroupNorm_0",)))
        links.append(Link("conv", edm + ".conv0", ours + ("Conv_0",), 3, resample))
        links.append(Link("dense", edm + ".affine", ours + ("Dense_0",)))
        links.append(Link("norm", edm + ".norm1", ours + ("GroupNorm_1",)))
        links.append(Link("conv", edm + ".conv1", ours + ("Conv_1",)))
        if cin != cout or resample:
            links.append(Link("conv", edm + ".skip", ours + ("Conv_2",), 1, resample))
        if attention:
            links.append(Link("attention", edm, ours + ("SelfAttention_0",), channels=cout))

    if nk["embedding_type"] == "fourier":
        links.append(Link("freqs", "map_noise.freqs", ()))
    if nk["label_dim"]:
        links.append(Link("dense", "map_label", ("map_label",)))
    if nk["augment_dim"]:
        links.append(Link("dense", "map_augment", ("map_augment",), bias=False))
    links.append(Link("dense", "map_layer0", ("Dense_0",)))
    links.append(Link("dense", "map_layer1", ("Dense_1",)))
    mc, mults, resolution = nk["model_channels"], nk["channel_mult"], nk["img_resolution"]
    cout, skips = nk["in_channels"], []
    for level, mult in enumerate(mults):
        res = resolution >> level
        if level == 0:
            cout = mc
            conv(f"enc.{res}x{res}_conv")
        else:
            block(f"enc.{res}x{res}_down", cout, cout, True, False)
            if nk["encoder_type"] == "residual":
                conv(f"enc.{res}x{res}_aux_residual", 3, True)
        skips.append(cout)
        for idx in range(nk["num_blocks"]):
            cin, cout = cout, mc * mult
            block(f"enc.{res}x{res}_block{idx}", cin, cout, False, res in nk["attn_resolutions"])
            skips.append(cout)
    for level in reversed(range(len(mults))):
        res, mult = resolution >> level, mults[level]
        if level == len(mults) - 1:
            block(f"dec.{res}x{res}_in0", cout, cout, False, True)
            block(f"dec.{res}x{res}_in1", cout, cout, False, False)
        else:
            block(f"dec.{res}x{res}_up", cout, cout, True, False)
        for idx in range(nk["num_blocks"] + 1):
            cin, cout = cout + skips.pop(), mc * mult
            attention = idx == nk["num_blocks"] and res in nk["attn_resolutions"]
            block(f"dec.{res}x{res}_block{idx}", cin, cout, False, attention)
    links.append(Link("norm", f"dec.{resolution}x{resolution}_aux_norm", ("GroupNorm_0",)))
    conv(f"dec.{resolution}x{resolution}_aux_conv")
    return links


def resample_buffer(resample_filter: Any) -> np.ndarray:
    """EDM's Conv2d resample_filter buffer: the filter's outer product over its sum squared."""
    f = np.asarray(resample_filter, np.float32)
    return (np.outer(f, f)[None, None] / f.sum() ** 2).astype(np.float32)


def _qkv_order(channels: int) -> np.ndarray:
    """Our qkv rows (q's, k's, v's, each contiguous) as rows of EDM's (row 3c + j)."""
    return np.arange(3 * channels).reshape(channels, 3).T.reshape(-1)


def flax_params(found: dict, path: str = "snapshot") -> PyTree:
    """The snapshot's network weights as our SongUNet's parameter tree ({"params": ...});
    SnapshotError when a tensor is missing, has another shape than the mapping expects, or is
    left over."""
    nk, tensors = found["network_kwargs"], dict(found["tensors"])
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise refuse(path, f"the tensor {name} is missing from its network")
        used.add(name)
        return np.asarray(tensors[name], np.float32)

    params: dict[str, Any] = {}
    for link in layout(nk):
        if link.kind == "freqs":
            take(link.edm)  # the config carries it (model_overrides)
            continue
        node = params
        for name in link.ours:
            node = node.setdefault(name, {})
        if link.kind == "conv":
            if link.resample:  # the FIR filter EDM keeps as a buffer: it must be the config's
                got, want = (
                    take(link.edm + ".resample_filter"),
                    resample_buffer(nk["resample_filter"]),
                )
                if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-7):
                    raise refuse(
                        path,
                        f"{link.edm}.resample_filter is not resample_filter="
                        f"{list(nk['resample_filter'])}",
                    )
            w = take(link.edm + ".weight")
            if w.shape[2:] != (link.kernel, link.kernel):
                raise refuse(
                    path,
                    f"{link.edm}.weight has shape {w.shape}, not a "
                    f"{link.kernel}x{link.kernel} convolution",
                )
            node["Conv_0"] = {
                "kernel": np.transpose(w, (2, 3, 1, 0)),
                "bias": take(link.edm + ".bias"),
            }
        elif link.kind == "dense":
            node["kernel"] = take(link.edm + ".weight").T
            if link.bias:
                node["bias"] = take(link.edm + ".bias")
        elif link.kind == "norm":
            node.update(scale=take(link.edm + ".weight"), bias=take(link.edm + ".bias"))
        else:  # attention: EDM's 1x1 convolutions as our dense layers
            order = _qkv_order(link.channels)
            node["GroupNorm_0"] = {
                "scale": take(link.edm + ".norm2.weight"),
                "bias": take(link.edm + ".norm2.bias"),
            }
            node["Dense_0"] = {
                "kernel": take(link.edm + ".qkv.weight")[order, :, 0, 0].T,
                "bias": take(link.edm + ".qkv.bias")[order],
            }
            node["Dense_1"] = {
                "kernel": take(link.edm + ".proj.weight")[:, :, 0, 0].T,
                "bias": take(link.edm + ".proj.bias"),
            }
    refuse_leftovers(path, tensors, used)
    return {"params": params}


def edm_state_dict(nk: dict, params: PyTree, prefix: str = "model.") -> dict[str, np.ndarray]:
    """The inverse of flax_params: our SongUNet's parameters (and the buffers EDM's layout holds:
    resampling filters, Fourier frequencies from nk["fourier_freqs"]) under EDM's names, in the
    order EDM's state_dict() gives them, each name with `prefix` (EDMPrecond holds the network
    as `model`)."""
    p = params["params"]
    out: dict[str, np.ndarray] = {}

    def put(name: str, value: Any) -> None:
        out[prefix + name] = np.ascontiguousarray(np.asarray(value, np.float32))

    for link in layout(nk):
        if link.kind == "freqs":
            put(link.edm, nk["fourier_freqs"])
            continue
        node = p
        for name in link.ours:
            node = node[name]
        if link.kind == "conv":
            put(link.edm + ".weight", np.transpose(node["Conv_0"]["kernel"], (3, 2, 0, 1)))
            put(link.edm + ".bias", node["Conv_0"]["bias"])
            if link.resample:
                put(link.edm + ".resample_filter", resample_buffer(nk["resample_filter"]))
        elif link.kind == "dense":
            put(link.edm + ".weight", np.asarray(node["kernel"]).T)
            if link.bias:
                put(link.edm + ".bias", node["bias"])
        elif link.kind == "norm":
            put(link.edm + ".weight", node["scale"])
            put(link.edm + ".bias", node["bias"])
        else:
            back = np.argsort(_qkv_order(link.channels))
            put(link.edm + ".norm2.weight", node["GroupNorm_0"]["scale"])
            put(link.edm + ".norm2.bias", node["GroupNorm_0"]["bias"])
            put(
                link.edm + ".qkv.weight",
                np.asarray(node["Dense_0"]["kernel"]).T[back, :, None, None],
            )
            put(link.edm + ".qkv.bias", np.asarray(node["Dense_0"]["bias"])[back])
            put(
                link.edm + ".proj.weight", np.asarray(node["Dense_1"]["kernel"]).T[:, :, None, None]
            )
            put(link.edm + ".proj.bias", node["Dense_1"]["bias"])
    return out
