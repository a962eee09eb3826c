"""EDM's network snapshots (Karras et al. 2022, NVlabs/edm; the ambient paper's code writes the
same format) as this project's networks: which network and preconditioning a snapshot holds,
its weights under our parameter names, and a work dir the programs accept.

A snapshot `network-snapshot-*.pkl` is a dict whose `ema` is a preconditioning object (EDMPrecond)
wrapping the network (`ema.model`, a SongUNet: DDPM++ or NCSN++). It is read by
`torch_files.read`, which runs nothing the file carries; its names map onto ours as
`unet_map` says. `export` goes the other way.
"""

import hashlib
import os
from typing import Any

import numpy as np

from ambient_jax.interop.torch_files import Persistent, read
from ambient_jax.interop.unet_map import SnapshotError, edm_state_dict, flax_params, refuse
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


# EDMPrecond's own arguments; the rest of its keyword arguments go to its network
PRECOND_FIELDS = (
    "img_resolution",
    "img_channels",
    "label_dim",
    "use_fp16",
    "sigma_min",
    "sigma_max",
    "sigma_data",
    "model_type",
)


def describe(path: str, snapshot: Any, args: dict | None = None) -> dict:
    """What the file holds, checked: the precond's and the network's constructor arguments
    (EDM's defaults filled in), the augment pipe's probability and the network's tensors by name.
    `snapshot` is an EDM snapshot (a dict with the network under 'ema'), or a state dict of an
    EDMPrecond (names model.*) with `args` its constructor's ({"class_name", "init_kwargs"}, what
    export writes beside it). SnapshotError naming what is missing or unsupported."""
    if isinstance(snapshot, dict) and isinstance(snapshot.get("ema"), Persistent):
        precond = snapshot["ema"]
        network = precond.child("model")
        pipe = snapshot.get("augment_pipe")
        augment_p = float(pipe.init_kwargs.get("p", 0.0)) if isinstance(pipe, Persistent) else 0.0
        return _checked(
            path,
            precond.class_name,
            dict(precond.init_kwargs),
            network.class_name if network else "nothing",
            dict(network.init_kwargs) if network else {},
            network.tensors() if network else {},
            augment_p,
        )
    if isinstance(snapshot, dict) and all(isinstance(v, np.ndarray) for v in snapshot.values()):
        if not args or "init_kwargs" not in args:
            raise refuse(
                path,
                "a state dict needs its constructor's arguments: give --args="
                'FILE.json ({"class_name": "EDMPrecond", "init_kwargs": {...}})',
            )
        pk = dict(args["init_kwargs"])
        nk = {k: v for k, v in pk.items() if k not in PRECOND_FIELDS}
        nk.update(
            img_resolution=pk.get("img_resolution"),
            in_channels=pk.get("img_channels"),
            out_channels=pk.get("img_channels"),
            label_dim=pk.get("label_dim", 0),
        )
        tensors = {
            k[len("model.") :] if k.startswith("model.") else k: v for k, v in snapshot.items()
        }
        return _checked(
            path,
            str(args.get("class_name")),
            pk,
            str(pk.get("model_type", "SongUNet")),
            nk,
            tensors,
            0.0,
        )
    raise refuse(
        path, "not an EDM network snapshot (a dict with the network under 'ema') nor a state dict"
    )


def _checked(path, precond, pk, network, network_kwargs, tensors, augment_p) -> dict:
    if precond != "EDMPrecond":
        raise refuse(
            path,
            f"its preconditioning is {precond}; this project converts EDMPrecond "
            "networks (VPPrecond, VEPrecond and iDDPMPrecond are not mapped yet)",
        )
    sigma_data = float(pk.get("sigma_data", 0.5))
    if not sigma_data > 0:
        raise refuse(path, f"its sigma_data is {pk['sigma_data']}; it must be > 0")
    if network != "SongUNet":
        raise refuse(
            path,
            f"its network is {network}; this project converts SongUNet (DDPM++, "
            "NCSN++) networks (DhariwalUNet is not ported yet)",
        )
    nk = dict(SONG_UNET_DEFAULTS, **network_kwargs)
    for name, allowed in (
        ("decoder_type", ("standard",)),
        ("encoder_type", ("standard", "residual")),
        ("embedding_type", ("positional", "fourier")),
    ):
        if nk[name] not in allowed:
            raise refuse(
                path, f"its SongUNet has {name}={nk[name]!r}; this project's takes {allowed}"
            )
    if nk.get("img_resolution") is None or nk.get("in_channels") is None:
        raise refuse(path, "its network's image size (img_resolution, img_channels) is not given")
    if nk["in_channels"] != nk["out_channels"]:
        raise refuse(path, "its network's input and output channels differ")
    return {
        "precond": precond,
        "network": network,
        "resolution": int(nk["img_resolution"]),
        "channels": int(nk["in_channels"]),
        "network_kwargs": nk,
        "augment_p": augment_p,
        "use_fp16": bool(pk.get("use_fp16", False)),
        "sigma_data": sigma_data,
        "tensors": tensors,
    }


def model_overrides(found: dict) -> dict:
    """config.model for the snapshot's network: a U-Net preset with every field set from it."""
    nk = found["network_kwargs"]
    overrides = {name: _plain(nk[name]) for name in SAME_FIELDS}
    if nk["label_dim"]:  # (unset = 0, unconditional)
        overrides["label_dim"] = int(nk["label_dim"])
    if nk["embedding_type"] == "fourier":
        freqs = found["tensors"]["map_noise.freqs"]
        overrides["fourier_freqs"] = tuple(float(f) for f in np.asarray(freqs, np.float32))
    preset = "ncsnpp_cifar10" if nk["embedding_type"] == "fourier" else "ddpmpp_cifar10"
    return {"preset": preset, "overrides": overrides}


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def config_for(found: dict, base: Config, path: str = "snapshot") -> Config:
    """`base` (the data and evaluation settings) with the snapshot's network; SnapshotError when
    the data's images are not the snapshot's."""
    want = (found["resolution"], found["channels"])
    have = (int(base.data.resolution), int(base.data.channels))
    if want != have:
        raise refuse(
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
    config.loss.sigma_data = found["sigma_data"]  # EDMPrecond's, which the loss uses too
    config.model.split_sigma = 0.0
    config.model.split_low_preset = ""
    augment_dim = found["network_kwargs"]["augment_dim"]
    if augment_dim:  # the augment pipe that gives that many labels, at the snapshot's rate
        pipes = {pipe.label_dim: name for name, pipe in augment.RECIPES.items()}
        if augment_dim not in pipes:
            raise refuse(
                path,
                f"its network takes {augment_dim} augment labels; this project's "
                f"pipes give {sorted(pipes)}",
            )
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


def convert(
    source: str, workdir: str, base: Config, log: Log = print, args: str | None = None
) -> dict:
    """Write `workdir` from an EDM snapshot (or a state dict with `args`, the JSON of its
    constructor's arguments; default: SOURCE.json where it exists): config.json, a checkpoint at
    step 0 whose parameters and EMA are the snapshot's EMA weights (fresh Adam state), subset.json
    (the training subset of `base`'s data, which the evaluation compares samples with: the
    snapshot does not say which images it was trained on) and converted.json (the source, its
    sha256, what it held). Refuses a work dir that already holds a checkpoint; writes nothing
    until the snapshot has passed every check."""
    import jax

    from ambient_jax import checkpoint, files
    from ambient_jax import config as config_lib
    from ambient_jax.training import run_dir, train_state, training_data

    if not os.path.exists(source):
        raise SnapshotError(f"--source={source} does not exist")
    if run_dir.has_checkpoint(workdir):
        raise SnapshotError(f"{workdir} already holds a checkpoint: give a new --workdir")
    args = args or (source + ".json" if os.path.exists(source + ".json") else None)
    if args and not os.path.exists(args):
        raise SnapshotError(f"--args={args} does not exist")
    found = describe(source, read(source), files.read_json(args) if args else None)
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


def edm_arguments(config: Config, network: Any) -> dict:
    """EDMPrecond's constructor arguments (its network's flattened in, as EDM's train.py passes
    them) for a run's SongUNet; SnapshotError for a network EDM's layout does not have."""
    from ambient_jax.nets.unet import SongUNet

    if not isinstance(network, SongUNet):
        raise SnapshotError(
            f"the run's network is a {type(network).__name__}: only a single U-Net (no "
            "model.split_sigma, no finetune.train_above) has EDM's layout"
        )
    nk = {name: _json(getattr(network, name)) for name in SAME_FIELDS}
    if network.embedding_type == "fourier":
        channels = network.model_channels * network.channel_mult_noise
        freqs = network.fourier_freqs or np.random.RandomState(0).randn(channels // 2) * 16.0
        nk["fourier_freqs"] = [float(f) for f in np.asarray(freqs, np.float32)]
    return dict(
        img_resolution=int(config.data.resolution),
        img_channels=int(config.data.channels),
        label_dim=int(network.label_dim),
        use_fp16=False,
        sigma_min=0,
        sigma_max=float("inf"),
        sigma_data=float(config.loss.sigma_data),
        model_type="SongUNet",
        augment_dim=int(network.augment_dim),
        decoder_type="standard",
        **nk,
    )


def export(workdir: str, out: str, log: Log = print) -> str:
    """The way back: the work dir's EMA weights as a PyTorch state dict of EDM's EDMPrecond
    (`out`, torch.save; names model.*) and its constructor's arguments (`out`.json). A network
    built from EDM's training/networks.py with those arguments loads the file with
    load_state_dict(strict=True). Needs torch."""
    try:
        import torch  # the converters' dependency (pip install 'ambient-jax[convert]')
    except ImportError as err:
        raise SnapshotError(
            "ambient-convert export writes a PyTorch file: pip install torch"
        ) from err
    from ambient_jax import checkpoint, files

    config, network, params = checkpoint.load_ema_params(workdir)
    kwargs = edm_arguments(config, network)
    nk = dict(
        SONG_UNET_DEFAULTS,
        **{k: v for k, v in kwargs.items() if k not in PRECOND_FIELDS},
        in_channels=kwargs["img_channels"],
        out_channels=kwargs["img_channels"],
        img_resolution=kwargs["img_resolution"],
    )
    state = edm_state_dict(nk, jax_to_numpy(params))
    # fourier_freqs is a buffer in EDM's layout (map_noise.freqs), not an argument
    arguments = {k: v for k, v in kwargs.items() if k != "fourier_freqs"}
    args = {"class_name": "EDMPrecond", "init_kwargs": arguments}
    files.makedirs(os.path.dirname(os.path.abspath(out)))
    tmp = f"{out}.tmp{os.getpid()}"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp)
    os.replace(tmp, out)
    files.write_json_atomic(out + ".json", args)
    log(
        f"exported {workdir} ({len(state)} tensors of EDMPrecond + SongUNet) to {out} "
        f"and {out}.json"
    )
    return out


def jax_to_numpy(tree: PyTree) -> PyTree:
    import jax

    return jax.tree_util.tree_map(np.asarray, tree)
