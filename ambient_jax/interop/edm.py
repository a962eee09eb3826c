"""EDM's network snapshots (Karras et al. 2022, NVlabs/edm; the ambient paper's code writes the
same format) as this project's networks: which network and preconditioning a snapshot holds,
its weights under our parameter names, and a work dir the programs accept.

A snapshot `network-snapshot-*.pkl` is a dict whose `ema` is a preconditioning object (EDMPrecond)
wrapping the network (`ema.model`, a SongUNet: DDPM++ or NCSN++). It is read by
`torch_files.read`, which runs nothing the file carries. Names map as EDM's SongUNet builds its
modules onto the order in which ours (ambient_jax.nets.unet) creates its own:

    map_noise.freqs (NCSN++)         -> model.overrides.fourier_freqs (a constant, not trained)
    map_augment / map_layer0 / 1     -> map_augment, Dense_0, Dense_1
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

import hashlib
import os
from typing import Any

import numpy as np

from ambient_jax.interop.torch_files import Persistent, read
from ambient_jax.types import Config, Log, PyTree

# EDM's SongUNet defaults (training/networks.py), for the arguments a snapshot does not record
SONG_UNET_DEFAULTS = dict(
    label_dim=0,
    augment_dim=0,
    model_channels=128,
    channel_mult=(1, 2, 2, 2),
    channel_mult_emb=4,
    num_blocks=4,
    attn_resolutions=(16,),
    dropout=0.10,
    label_dropout=0,
    embedding_type="positional",
    channel_mult_noise=1,
    encoder_type="standard",
    decoder_type="standard",
    resample_filter=(1, 1),
)
# our SongUNet's fields that EDM's arguments set one to one
SAME_FIELDS = (
    "model_channels",
    "channel_mult",
    "channel_mult_emb",
    "num_blocks",
    "attn_resolutions",
    "dropout",
    "embedding_type",
    "channel_mult_noise",
    "encoder_type",
    "resample_filter",
)


class SnapshotError(ValueError):
    """A snapshot this project cannot represent (or not a snapshot at all)."""


def _refuse(path: str, what: str) -> SnapshotError:
    return SnapshotError(f"{path}: {what}")


def describe(path: str, snapshot: Any) -> dict:
    """What the snapshot holds, checked: the precond's and the network's constructor arguments
    (EDM's defaults filled in), the augment pipe's probability and the tensors by name.
    SnapshotError naming what is missing or unsupported."""
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("ema"), Persistent):
        raise _refuse(path, "not an EDM network snapshot (a dict with the network under 'ema')")
    precond = snapshot["ema"]
    if precond.class_name != "EDMPrecond":
        raise _refuse(
            path,
            f"its preconditioning is {precond.class_name}; this project converts EDMPrecond "
            "networks (VPPrecond, VEPrecond and iDDPMPrecond are not mapped yet)",
        )
    pk = dict(precond.init_kwargs)
    if float(pk.get("sigma_data", 0.5)) != 0.5:
        raise _refuse(
            path, f"sigma_data {pk['sigma_data']}: this project's preconditioning uses 0.5"
        )
    network = precond.child("model")
    if network is None or network.class_name != "SongUNet":
        kind = network.class_name if network else "nothing"
        raise _refuse(path, f"its network is {kind}; this project converts SongUNet (DDPM++, "
                      "NCSN++) networks (DhariwalUNet is not ported yet)")  # fmt: skip
    nk = dict(SONG_UNET_DEFAULTS, **network.init_kwargs)
    for name, allowed in (
        ("label_dim", (0,)),
        ("decoder_type", ("standard",)),
        ("encoder_type", ("standard", "residual")),
        ("embedding_type", ("positional", "fourier")),
    ):
        if nk[name] not in allowed:
            later = (
                " (class-conditional networks are not mapped yet)" if name == "label_dim" else ""
            )
            raise _refuse(
                path, f"its SongUNet has {name}={nk[name]!r}; this project's takes {allowed}{later}"
            )
    if nk["in_channels"] != nk["out_channels"]:
        raise _refuse(path, "its network's input and output channels differ")
    pipe = snapshot.get("augment_pipe")
    augment_p = float(pipe.init_kwargs.get("p", 0.0)) if isinstance(pipe, Persistent) else 0.0
    return {
        "precond": precond.class_name,
        "network": network.class_name,
        "resolution": int(nk["img_resolution"]),
        "channels": int(nk["in_channels"]),
        "network_kwargs": nk,
        "augment_p": augment_p,
        "use_fp16": bool(pk.get("use_fp16", False)),
        "tensors": network.tensors(),
    }


def model_overrides(found: dict) -> dict:
    """config.model for the snapshot's network: a U-Net preset with every field set from it."""
    nk = found["network_kwargs"]
    overrides = {name: _plain(nk[name]) for name in SAME_FIELDS}
    if nk["embedding_type"] == "fourier":
        freqs = found["tensors"]["map_noise.freqs"]
        overrides["fourier_freqs"] = tuple(float(f) for f in np.asarray(freqs, np.float32))
    preset = "ncsnpp_cifar10" if nk["embedding_type"] == "fourier" else "ddpmpp_cifar10"
    return {"preset": preset, "overrides": overrides}


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _conv(w: np.ndarray) -> dict:
    return {"kernel": np.transpose(w, (2, 3, 1, 0))}


def flax_params(found: dict, path: str = "snapshot") -> PyTree:
    """The snapshot's network weights as our SongUNet's parameter tree ({"params": ...});
    SnapshotError when a tensor is missing, has another shape than the mapping expects, or is
    left over."""
    nk, tensors = found["network_kwargs"], dict(found["tensors"])
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise _refuse(path, f"the tensor {name} is missing from its network")
        if name in used:
            raise _refuse(path, f"the tensor {name} would be used twice")
        used.add(name)
        return np.asarray(tensors[name], np.float32)

    def conv(prefix: str, kernel: int = 3, resample: bool = False) -> dict:
        if resample:  # the FIR filter EDM keeps as a buffer: it must be the config's
            f = np.asarray(nk["resample_filter"], np.float32)
            want = np.outer(f, f)[None, None] / f.sum() ** 2
            got = take(prefix + ".resample_filter")
            if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-7):
                raise _refuse(path, f"{prefix}.resample_filter is not resample_filter={list(f)}")
        w = take(prefix + ".weight")
        if w.shape[2:] != (kernel, kernel):
            raise _refuse(
                path, f"{prefix}.weight has shape {w.shape}, not a {kernel}x{kernel} conv"
            )
        return {"Conv_0": {**_conv(w), "bias": take(prefix + ".bias")}}

    def dense(prefix: str, bias: bool = True) -> dict:
        out = {"kernel": take(prefix + ".weight").T}
        if bias:
            out["bias"] = take(prefix + ".bias")
        return out

    def norm(prefix: str) -> dict:
        return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

    def block(prefix: str, cin: int, cout: int, resample: bool, attention: bool) -> dict:
        p = {
            "GroupNorm_0": norm(prefix + ".norm0"),
            "Conv_0": conv(prefix + ".conv0", 3, resample),
            "Dense_0": dense(prefix + ".affine"),
            "GroupNorm_1": norm(prefix + ".norm1"),
            "Conv_1": conv(prefix + ".conv1"),
        }
        if cin != cout or resample:
            p["Conv_2"] = conv(prefix + ".skip", 1, resample)
        if attention:
            qkv_w = take(prefix + ".qkv.weight")[:, :, 0, 0]  # [3C, C], row 3c + j
            qkv_b = take(prefix + ".qkv.bias")
            order = np.arange(3 * cout).reshape(cout, 3).T.reshape(-1)  # q's rows, k's, v's
            p["SelfAttention_0"] = {
                "GroupNorm_0": norm(prefix + ".norm2"),
                "Dense_0": {"kernel": qkv_w[order].T, "bias": qkv_b[order]},
                "Dense_1": {
                    "kernel": take(prefix + ".proj.weight")[:, :, 0, 0].T,
                    "bias": take(prefix + ".proj.bias"),
                },
            }
        return p

    params: dict[str, Any] = {}
    convs, blocks = iter(range(10_000)), iter(range(10_000))
    next_conv = lambda: f"Conv_{next(convs)}"
    next_block = lambda: f"UNetBlock_{next(blocks)}"
    if nk["embedding_type"] == "fourier":
        take("map_noise.freqs")  # the config carries it (model_overrides)
    if nk["augment_dim"]:
        params["map_augment"] = dense("map_augment", bias=False)
    params["Dense_0"], params["Dense_1"] = dense("map_layer0"), dense("map_layer1")

    mc, mult_list, resolution = nk["model_channels"], nk["channel_mult"], nk["img_resolution"]
    cout, skips = nk["in_channels"], []
    for level, mult in enumerate(mult_list):
        res = resolution >> level
        if level == 0:
            cout = mc
            params[next_conv()] = conv(f"enc.{res}x{res}_conv")
        else:
            params[next_block()] = block(f"enc.{res}x{res}_down", cout, cout, True, False)
            if nk["encoder_type"] == "residual":
                params[next_conv()] = conv(f"enc.{res}x{res}_aux_residual", 3, True)
        skips.append(cout)
        for idx in range(nk["num_blocks"]):
            cin, cout = cout, mc * mult
            attention = res in nk["attn_resolutions"]
            params[next_block()] = block(f"enc.{res}x{res}_block{idx}", cin, cout, False, attention)
            skips.append(cout)
    for level in reversed(range(len(mult_list))):
        res, mult = resolution >> level, mult_list[level]
        if level == len(mult_list) - 1:
            params[next_block()] = block(f"dec.{res}x{res}_in0", cout, cout, False, True)
            params[next_block()] = block(f"dec.{res}x{res}_in1", cout, cout, False, False)
        else:
            params[next_block()] = block(f"dec.{res}x{res}_up", cout, cout, True, False)
        for idx in range(nk["num_blocks"] + 1):
            cin, cout = cout + skips.pop(), mc * mult
            attention = idx == nk["num_blocks"] and res in nk["attn_resolutions"]
            params[next_block()] = block(f"dec.{res}x{res}_block{idx}", cin, cout, False, attention)
    params["GroupNorm_0"] = norm(f"dec.{resolution}x{resolution}_aux_norm")
    params[next_conv()] = conv(f"dec.{resolution}x{resolution}_aux_conv")

    left = [name for name in tensors if name not in used]
    if left:
        raise _refuse(path, f"its tensor {left[0]} (and {len(left) - 1} more) has no place in "
                      "the network its arguments describe")  # fmt: skip
    return {"params": params}


def config_for(found: dict, base: Config, path: str = "snapshot") -> Config:
    """`base` (the data and evaluation settings) with the snapshot's network; SnapshotError when
    the data's images are not the snapshot's."""
    want = (found["resolution"], found["channels"])
    have = (int(base.data.resolution), int(base.data.channels))
    if want != have:
        raise _refuse(
            path,
            f"it makes {want[0]}x{want[0]}x{want[1]} images, the config's data are "
            f"{have[0]}x{have[0]}x{have[1]}: give the config of its data set (--config=...) or "
            "set --config.data.resolution / --config.data.channels",
        )
    from ambient_jax import config as config_lib
    from ambient_jax.data import augment

    config = config_lib.complete(base)
    model = model_overrides(found)
    config.model.preset = model["preset"]
    for name, value in model["overrides"].items():
        config.model.overrides[name] = value
    config.model.split_sigma = 0.0
    config.model.split_low_preset = ""
    augment_dim = found["network_kwargs"]["augment_dim"]
    if augment_dim:  # the augment pipe that gives that many labels, at the snapshot's rate
        pipes = {pipe.label_dim: name for name, pipe in augment.RECIPES.items()}
        if augment_dim not in pipes:
            raise _refuse(path, f"its network takes {augment_dim} augment labels; this project's "
                          f"pipes give {sorted(pipes)}")  # fmt: skip
        config.data.augment_pipe = pipes[augment_dim]
        config.data.augment_p = found["augment_p"] or 0.12
    else:
        config.data.augment_p = 0.0
    return config


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(source: str, workdir: str, base: Config, log: Log = print) -> dict:
    """Write `workdir` from an EDM snapshot: config.json, a checkpoint at step 0 whose parameters
    and EMA are the snapshot's EMA weights (fresh Adam state), subset.json (the training subset of
    `base`'s data, which the evaluation compares samples with: the snapshot does not say which
    images it was trained on) and converted.json (the source, its sha256, what it held). Refuses
    a work dir that already holds a checkpoint; writes nothing until the snapshot has passed
    every check."""
    import jax

    from ambient_jax import checkpoint, files
    from ambient_jax import config as config_lib
    from ambient_jax.training import run_dir, train_state, training_data

    if not os.path.exists(source):
        raise SnapshotError(f"--source={source} does not exist")
    if run_dir.has_checkpoint(workdir):
        raise SnapshotError(f"{workdir} already holds a checkpoint: give a new --workdir")
    found = describe(source, read(source))
    config = config_for(found, base, source)
    config_lib.check_config(config)
    params = flax_params(found, source)
    model = train_state.network(config, config.data.channels)
    target = train_state.param_shapes(config, model)
    names = lambda tree: [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]
    if names(params) != names(target):  # (a mapping that misses our network's layout)
        differ = sorted(set(names(params)) ^ set(names(target)))
        raise SnapshotError(f"{source}: its weights do not fill our network (first: {differ[0]})")
    checkpoint.check_shapes(params, target, source)
    optimizer, _ = train_state.make_optimizer(config.optim, config.train.batch_size)
    params = jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a, jax.numpy.float32), params)
    state = train_state.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        ema_params=jax.tree_util.tree_map(jax.numpy.copy, params),
        opt_state=optimizer.init(params),
    )
    # the images the evaluation compares samples with: the config's training subset
    data = training_data.TrainingData(config)
    files.makedirs(workdir)
    config_lib.save_config(workdir, config)
    data.record(workdir, config)
    manager = checkpoint.make_manager(workdir)
    checkpoint.save(manager, 0, state)
    manager.wait_until_finished()
    record = {
        "source": files.absolute(source),
        "sha256": file_digest(source),
        "precond": found["precond"],
        "network": found["network"],
        "network_kwargs": {k: _json(v) for k, v in found["network_kwargs"].items()},
        "tensors": len(found["tensors"]),
        "use_fp16": found["use_fp16"],
    }
    files.write_json_atomic(os.path.join(workdir, "converted.json"), record)
    log(
        f"converted {source} ({found['network']} under {found['precond']}, "
        f"{len(found['tensors'])} tensors) to {workdir}"
    )
    return record


def _json(value):
    return list(value) if isinstance(value, tuple) else value
