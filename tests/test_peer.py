"""The PyTorch peer of the benchmarks (benchmarks/torch_songunet.py) computes the same function as
our Flax U-Nets on the same weights, so its timing compares equal work."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ambient_jax import nets

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import torch_songunet  # noqa: E402

TINY_NCSNPP = dict(
    embedding_type="fourier",
    channel_mult_noise=2,
    encoder_type="residual",
    resample_filter=(1, 3, 3, 1),
)


@pytest.mark.parametrize("overrides", [{}, TINY_NCSNPP], ids=["ddpmpp", "ncsnpp"])
def test_peer_computes_our_network_on_our_weights(overrides):
    model = nets.build_model("tiny", 3, **overrides)
    params = nets.init_params(model, (16, 16, 3), jax.random.key(0))
    # away from EDM's near-zero output init, so that every layer shows in the output
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    )
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    c_noise = jnp.array([-1.3, 0.7])
    ours = np.asarray(model.apply(params, x, c_noise))
    fields = dict(nets.PRESETS["tiny"][1], **overrides)
    peer = torch_songunet.TorchSongUNet(torch_songunet.torch_params(params), **fields)
    with torch.no_grad():
        theirs = peer(
            torch.tensor(np.asarray(x).transpose(0, 3, 1, 2)), torch.tensor(np.asarray(c_noise))
        )
    theirs = theirs.numpy().transpose(0, 2, 3, 1)
    assert np.abs(ours).max() > 0.1
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())
