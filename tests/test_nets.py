"""The score networks: parameter counts of the presets, shapes, determinism, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambient_jax.nets import build_model


def param_count(model, shape):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros(shape[:1])))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize(
    "preset, shape, expected",
    [("ddpmpp_cifar10", (1, 32, 32, 3), 55.7e6), ("ncsnpp_cifar10", (1, 32, 32, 3), 56.4e6), ("ncsnpp_ffhq64", (1, 64, 64, 3), 62.8e6)],
)
def test_preset_parameter_counts_match_edm(preset, shape, expected):
    count = param_count(build_model(preset, shape[-1]), shape)
    assert abs(count / expected - 1) < 0.01, count


@pytest.mark.parametrize("preset, dropout", [("tiny", 0.2), ("mlp_small", 0.2)])
def test_networks_keep_shape_are_deterministic_and_drop_out_only_in_training(preset, dropout):
    model = build_model(preset, 1, dropout=dropout, **({"width": 64} if preset == "mlp_small" else {}))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    c_noise = jnp.array([-1.0, 0.5])
    init = jax.jit(model.init)
    params = init(jax.random.key(1), x, c_noise)
    again = init(jax.random.key(1), x, c_noise)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), params, again))
    # Perturb the near-zero output layers so that the output depends on the whole network.
    params = jax.jit(jax.tree_util.tree_map, static_argnums=0)(
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params
    )
    apply = jax.jit(model.apply, static_argnames="train")
    out = apply(params, x, c_noise)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, apply(params, x, c_noise))
    drop = lambda seed: apply(params, x, c_noise, train=True, rngs={"dropout": jax.random.key(seed)})
    np.testing.assert_array_equal(drop(3), drop(3))
    assert not np.allclose(drop(3), drop(4))
    assert not np.allclose(drop(3), out)


def test_unknown_preset_or_field_is_named():
    with pytest.raises(ValueError, match="model.preset"):
        build_model("resnet9000", 3)
    with pytest.raises(ValueError, match="widht"):
        build_model("mlp_small", 1, widht=3)
