"""The way back out: a work dir's network as EDM's (Karras et al. 2022, NVlabs/edm): a PyTorch state
dict of EDM's precond class, its network's weights under EDM's names (`unet_map`, `adm_map`), and
the constructor's arguments beside it, which EDM's `training/networks.py` loads strictly."""

import os
from typing import Any

import numpy as np

from ambient_jax.diffusion import precond as precond_lib
from ambient_jax.interop import adm_map
from ambient_jax.interop.edm import (
    PRECOND_COMMON,
    PRECOND_CONSTANTS,
    PRECONDS,
    SAME_FIELDS,
    SONG_UNET_DEFAULTS,
    as_json,
)
from ambient_jax.interop.unet_map import SnapshotError, edm_state_dict
from ambient_jax.types import Config, Log, PyTree


def precond_class(config: Config) -> str:
    """The name of EDM's class for the run's preconditioning (config.model.precond.kind)."""
    return {kind: name for name, (kind, _) in PRECONDS.items()}[config.model.precond.kind]


def edm_arguments(config: Config, network: Any) -> dict:
    """The constructor arguments of EDM's precond class (precond_class), its network's flattened
    in as EDM's train.py passes them, for a run's SongUNet or DhariwalUNet; SnapshotError for a
    network EDM's layout does not have."""
    from ambient_jax.nets.dhariwal import DhariwalUNet
    from ambient_jax.nets.unet import SongUNet

    if not isinstance(network, (SongUNet, DhariwalUNet)):
        raise SnapshotError(
            f"the run's network is a {type(network).__name__}: only a single U-Net (no "
            "model.split_sigma, no finetune.train_above) has EDM's layout"
        )
    model_type = type(network).__name__
    nk = {name: as_json(getattr(network, name)) for name in SAME_FIELDS[model_type]}
    if model_type == "SongUNet":
        nk["decoder_type"] = "standard"
        if network.embedding_type == "fourier":
            channels = network.model_channels * network.channel_mult_noise
            freqs = network.fourier_freqs or np.random.RandomState(0).randn(channels // 2) * 16.0
            nk["fourier_freqs"] = [float(f) for f in np.asarray(freqs, np.float32)]
    class_name = precond_class(config)
    kind, own_defaults = PRECONDS[class_name]
    own: dict[str, Any] = {name: config.model.precond[name] for name in PRECOND_CONSTANTS[kind]}
    if kind == "edm":
        own.update(sigma_min=0, sigma_max=float("inf"), sigma_data=float(config.loss.sigma_data))
    return dict(
        img_resolution=int(config.data.resolution),
        img_channels=int(config.data.channels),
        label_dim=int(network.label_dim),
        use_fp16=False,
        **own,
        model_type=model_type,
        augment_dim=int(network.augment_dim),
        **nk,
    )


def export(workdir: str, out: str, log: Log = print) -> str:
    """The way back: the work dir's EMA weights as a PyTorch state dict of EDM's precond class
    (`out`, torch.save; the network's names model.*, iDDPM's level table u) and its
    constructor's arguments (`out`.json). A network built from EDM's training/networks.py with
    those arguments loads the file with load_state_dict(strict=True). Needs torch."""
    try:
        import torch  # the converters' dependency (pip install 'ambient-jax[convert]')
    except ImportError as err:
        raise SnapshotError(
            "ambient-convert export writes a PyTorch file: pip install torch"
        ) from err
    from ambient_jax import checkpoint, files

    config, network, params = checkpoint.load_ema_params(workdir)
    kwargs = edm_arguments(config, network)
    class_name = precond_class(config)
    kind, own_defaults = PRECONDS[class_name]
    if kwargs["model_type"] == "SongUNet":
        nk = dict(
            SONG_UNET_DEFAULTS,
            **{k: v for k, v in kwargs.items() if k not in PRECOND_COMMON + tuple(own_defaults)},
            in_channels=kwargs["img_channels"],
            img_resolution=kwargs["img_resolution"],
            label_dim=kwargs["label_dim"],
        )
        state = edm_state_dict(nk, jax_to_numpy(params))
    else:
        state = adm_map.edm_state_dict(jax_to_numpy(params))
    if kind == "iddpm":  # the precond's own buffer
        p = precond_lib.from_config(config)
        state["u"] = precond_lib.iddpm_levels(p.M, p.C_1, p.C_2)
    # fourier_freqs is a buffer in EDM's layout (map_noise.freqs), not an argument
    arguments = {k: v for k, v in kwargs.items() if k != "fourier_freqs"}
    args = {"class_name": class_name, "init_kwargs": arguments}
    files.makedirs(os.path.dirname(os.path.abspath(out)))
    tmp = f"{out}.tmp{os.getpid()}"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp)
    os.replace(tmp, out)
    files.write_json_atomic(out + ".json", args)
    log(
        f"exported {workdir} ({len(state)} tensors of {class_name} + {kwargs['model_type']}) "
        f"to {out} and {out}.json"
    )
    return out


def jax_to_numpy(tree: PyTree) -> PyTree:
    import jax

    return jax.tree_util.tree_map(np.asarray, tree)
