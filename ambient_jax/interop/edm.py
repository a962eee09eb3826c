"""EDM's network snapshots (Karras et al. 2022, NVlabs/edm; the ambient paper's code writes the
same format) as this project's networks: which network and preconditioning a snapshot holds,
its weights under our parameter names, and a work dir the programs accept.

A snapshot `network-snapshot-*.pkl` is a dict whose `ema` is a preconditioning object (EDMPrecond,
VPPrecond, VEPrecond or iDDPMPrecond) wrapping the network (`ema.model`, a SongUNet: DDPM++ or
NCSN++, or a DhariwalUNet: ADM). It is read by
`torch_files.read`, which runs nothing the file carries; its names map onto ours as
`unet_map` (SongUNet) and `adm_map` (DhariwalUNet) say. `edm_export` goes the other way.
"""

import hashlib
import os
from typing import Any

import numpy as np

from ambient_jax.diffusion import precond as precond_lib
from ambient_jax.interop import adm_map
from ambient_jax.interop.torch_files import Persistent, read
from ambient_jax.interop.unet_map import SnapshotError, flax_params, refuse
from ambient_jax.types import Config, Log, PyTree

# EDM's network defaults (training/networks.py), for the arguments a snapshot does not record
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
DHARIWAL_UNET_DEFAULTS = dict(
    label_dim=0,
    augment_dim=0,
    model_channels=192,
    channel_mult=(1, 2, 3, 4),
    channel_mult_emb=4,
    num_blocks=3,
    attn_resolutions=(32, 16, 8),
    dropout=0.10,
    label_dropout=0,
)
NETWORK_DEFAULTS = {"SongUNet": SONG_UNET_DEFAULTS, "DhariwalUNet": DHARIWAL_UNET_DEFAULTS}
# our networks' fields that EDM's arguments set one to one
SAME_FIELDS = {
    "SongUNet": (
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
    ),
    "DhariwalUNet": (
        "model_channels",
        "channel_mult",
        "channel_mult_emb",
        "num_blocks",
        "attn_resolutions",
        "dropout",
    ),
}

# EDM's preconditioning classes: our precond kind and the class's own arguments with their
# defaults (the rest of its keyword arguments go to its network)
PRECONDS = {
    "EDMPrecond": (
        "edm",
        dict(sigma_min=0.0, sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet"),
    ),
    "VPPrecond": (
        "vp",
        dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5, model_type="SongUNet"),
    ),
    "VEPrecond": ("ve", dict(sigma_min=0.02, sigma_max=100.0, model_type="SongUNet")),
    "iDDPMPrecond": ("iddpm", dict(C_1=0.001, C_2=0.008, M=1000, model_type="DhariwalUNet")),
}
PRECOND_COMMON = ("img_resolution", "img_channels", "label_dim", "use_fp16")
# the preconditioning constants that config.model.precond carries (edm's sigma_data goes to
# config.loss.sigma_data)
PRECOND_CONSTANTS = {
    "edm": (),
    "vp": ("beta_d", "beta_min", "M", "epsilon_t"),
    "ve": ("sigma_min", "sigma_max"),
    "iddpm": ("C_1", "C_2", "M"),
}
PRESETS = {
    ("SongUNet", "positional"): "ddpmpp_cifar10",
    ("SongUNet", "fourier"): "ncsnpp_cifar10",
    ("DhariwalUNet", None): "adm_imagenet64",
}


def describe(path: str, snapshot: Any, args: dict | None = None) -> dict:
    """What the file holds, checked: the precond's and the network's constructor arguments
    (EDM's defaults filled in), the augment pipe's probability and the tensors by name (the
    network's, and the precond's own buffers: iDDPM's level table `u`). `snapshot` is an EDM
    snapshot (a dict with the network under 'ema'), or a state dict of a precond (the network's
    names model.*) with `args` its constructor's ({"class_name", "init_kwargs"}, what export
    writes beside it). SnapshotError naming what is missing or unsupported."""
    if isinstance(snapshot, dict) and isinstance(snapshot.get("ema"), Persistent):
        precond = snapshot["ema"]
        network = precond.child("model")
        pipe = snapshot.get("augment_pipe")
        augment_p = float(pipe.init_kwargs.get("p", 0.0)) if isinstance(pipe, Persistent) else 0.0
        own = {k: v for k, v in precond.tensors().items() if not k.startswith("model.")}
        return _checked(
            path,
            precond.class_name,
            dict(precond.init_kwargs),
            network.class_name if network else "nothing",
            dict(network.init_kwargs) if network else {},
            network.tensors() if network else {},
            own,
            augment_p,
        )
    if isinstance(snapshot, dict) and all(isinstance(v, np.ndarray) for v in snapshot.values()):
        if not args or "init_kwargs" not in args:
            raise refuse(
                path,
                "a state dict needs its constructor's arguments: give --args="
                'FILE.json ({"class_name": "EDMPrecond", "init_kwargs": {...}})',
            )
        class_name = str(args.get("class_name"))
        pk = dict(args["init_kwargs"])
        own_args = PRECONDS.get(class_name, ("", {}))[1]
        nk = {k: v for k, v in pk.items() if k not in PRECOND_COMMON and k not in own_args}
        nk.update(
            img_resolution=pk.get("img_resolution"),
            in_channels=pk.get("img_channels"),
            out_channels=_out_channels(class_name, pk.get("img_channels")),
            label_dim=pk.get("label_dim", 0),
        )
        network = pk.get("model_type", own_args.get("model_type", "nothing"))
        tensors = {k[len("model.") :]: v for k, v in snapshot.items() if k.startswith("model.")}
        own = {k: v for k, v in snapshot.items() if not k.startswith("model.")}
        return _checked(path, class_name, pk, str(network), nk, tensors, own, 0.0)
    raise refuse(
        path, "not an EDM network snapshot (a dict with the network under 'ema') nor a state dict"
    )


def _out_channels(class_name: str, channels: Any) -> Any:
    """The network's output channels under EDM's precond class (iDDPM: twice, the variance)."""
    if channels is None:
        return None
    return 2 * int(channels) if class_name == "iDDPMPrecond" else int(channels)


def _checked(path, precond, pk, network, network_kwargs, tensors, own, augment_p) -> dict:
    if precond not in PRECONDS:
        raise refuse(
            path,
            f"its preconditioning is {precond}; this project converts {', '.join(PRECONDS)}",
        )
    kind, own_defaults = PRECONDS[precond]
    constants = {**own_defaults, **{k: v for k, v in pk.items() if k in own_defaults}}
    sigma_data = float(constants.get("sigma_data", 0.5))
    if not sigma_data > 0:
        raise refuse(path, f"its sigma_data is {pk['sigma_data']}; it must be > 0")
    if network not in NETWORK_DEFAULTS:
        raise refuse(
            path,
            f"its network is {network}; this project converts SongUNet (DDPM++, NCSN++) and "
            "DhariwalUNet (ADM) networks",
        )
    nk = dict(NETWORK_DEFAULTS[network], **network_kwargs)
    if network == "SongUNet":
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
    if nk["out_channels"] != _out_channels(precond, nk["in_channels"]):
        raise refuse(
            path,
            f"its network gives {nk['out_channels']} channels for {nk['in_channels']}-channel "
            f"images; {precond} takes {_out_channels(precond, nk['in_channels'])}",
        )
    precond_args = {name: constants[name] for name in PRECOND_CONSTANTS[kind]}
    _check_own_tensors(path, kind, precond_args, own)
    return {
        "precond": precond,
        "precond_kind": kind,
        "precond_args": precond_args,
        "network": network,
        "resolution": int(nk["img_resolution"]),
        "channels": int(nk["in_channels"]),
        "network_kwargs": nk,
        "augment_p": augment_p,
        "use_fp16": bool(pk.get("use_fp16", False)),
        "sigma_data": sigma_data,
        "tensors": tensors,
    }


def _check_own_tensors(path: str, kind: str, precond_args: dict, own: dict) -> None:
    """The precond's own buffers: iDDPM's level table `u` (checked against the one its constants
    give, which our denoiser computes), nothing under the others."""
    expected = {"u"} if kind == "iddpm" else set()
    for name in own:
        if name not in expected:
            raise refuse(
                path, f"its tensor {name} has no place in the network or its {kind} precond"
            )
    if kind == "iddpm":
        if "u" not in own:
            raise refuse(path, "its iDDPMPrecond level table u is missing")
        want = precond_lib.iddpm_levels(
            int(precond_args["M"]), float(precond_args["C_1"]), float(precond_args["C_2"])
        )
        got = np.asarray(own["u"], np.float32)
        # (float32 sines differ by an ulp between libraries, and the recursion carries it: the
        # tables of torch and numpy differ by up to 3e-5 relative)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-7):
            raise refuse(
                path,
                f"its iDDPMPrecond level table u is not the one M={precond_args['M']}, "
                f"C_1={precond_args['C_1']}, C_2={precond_args['C_2']} give",
            )


def model_overrides(found: dict) -> dict:
    """config.model for the snapshot's network: a preset with every field set from it."""
    nk, network = found["network_kwargs"], found["network"]
    overrides = {name: _plain(nk[name]) for name in SAME_FIELDS[network]}
    if nk["label_dim"]:  # (unset = 0, unconditional)
        overrides["label_dim"] = int(nk["label_dim"])
    if nk.get("embedding_type") == "fourier":
        freqs = found["tensors"]["map_noise.freqs"]
        overrides["fourier_freqs"] = tuple(float(f) for f in np.asarray(freqs, np.float32))
    preset = PRESETS[(network, nk.get("embedding_type"))]
    return {"preset": preset, "overrides": overrides}


def network_params(found: dict, path: str = "snapshot") -> PyTree:
    """The snapshot's network weights as our network's parameter tree (SnapshotError as
    unet_map.flax_params and adm_map.flax_params say)."""
    if found["network"] == "SongUNet":
        return flax_params(found, path)
    import jax

    from ambient_jax.nets import build_model, init_params

    model = model_overrides(found)
    network = build_model(
        model["preset"],
        _out_channels(found["precond"], found["channels"]),
        augment_dim=found["network_kwargs"]["augment_dim"],
        **model["overrides"],
    )
    shape = (found["resolution"], found["resolution"], found["channels"])
    shapes = jax.eval_shape(lambda k: init_params(network, shape, k), jax.random.key(0))
    return adm_map.flax_params(found["tensors"], shapes, path)


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
    config.model.precond.kind = found["precond_kind"]
    for name, value in found["precond_args"].items():
        config.model.precond[name] = type(config.model.precond[name])(value)
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
    params = network_params(found, source)
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
        "network_kwargs": {k: as_json(v) for k, v in found["network_kwargs"].items()},
        "tensors": len(found["tensors"]),
        "use_fp16": found["use_fp16"],
    }
    files.write_json_atomic(os.path.join(workdir, "converted.json"), record)
    log(
        f"converted {source} ({found['network']} under {found['precond']}, "
        f"{len(found['tensors'])} tensors) to {workdir}"
    )
    return record


def as_json(value: Any) -> Any:
    """A tuple as the list JSON writes."""
    return list(value) if isinstance(value, tuple) else value
