"""The score networks: parameter counts of the presets, shapes, determinism, dropout."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambient_jax.nets import build_model


def param_count(model, shape):
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros(shape[:1]))
    )
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize(
    "preset, shape, expected",
    [
        ("ddpmpp_cifar10", (1, 32, 32, 3), 55.7e6),
        ("ncsnpp_cifar10", (1, 32, 32, 3), 56.4e6),
        ("ncsnpp_ffhq64", (1, 64, 64, 3), 62.8e6),
    ],
)
def test_preset_parameter_counts_match_edm(preset, shape, expected):
    count = param_count(build_model(preset, shape[-1]), shape)
    assert abs(count / expected - 1) < 0.01, count


@pytest.mark.parametrize("preset, dropout", [("tiny", 0.2), ("mlp_small", 0.2)])
def test_networks_keep_shape_are_deterministic_and_drop_out_only_in_training(preset, dropout):
    model = build_model(
        preset, 1, dropout=dropout, **({"width": 64} if preset == "mlp_small" else {})
    )
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    c_noise = jnp.array([-1.0, 0.5])
    init = jax.jit(model.init)
    params = init(jax.random.key(1), x, c_noise)
    again = init(jax.random.key(1), x, c_noise)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), params, again)
    )
    # Perturb the near-zero output layers so that the output depends on the whole network.
    params = jax.jit(jax.tree_util.tree_map, static_argnums=0)(
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params
    )
    apply = jax.jit(model.apply, static_argnames="train")
    out = apply(params, x, c_noise)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, apply(params, x, c_noise))
    drop = lambda seed: apply(
        params, x, c_noise, train=True, rngs={"dropout": jax.random.key(seed)}
    )
    np.testing.assert_array_equal(drop(3), drop(3))
    assert not np.allclose(drop(3), drop(4))
    assert not np.allclose(drop(3), out)


def test_unknown_preset_or_field_is_named():
    with pytest.raises(ValueError, match="model.preset"):
        build_model("resnet9000", 3)
    with pytest.raises(ValueError, match="widht"):
        build_model("mlp_small", 1, widht=3)


def perturbed_tiny_unet(x_shape=(2, 16, 16, 3), **fields):
    model = build_model("tiny", 3, **fields)
    x = jax.random.normal(jax.random.key(0), x_shape)
    c_noise = jnp.array([-1.0, 0.5])[: x_shape[0]]
    perturb = lambda p: (
        p + 0.05 * jax.random.normal(jax.random.key(2), p.shape)
    )  # the near-zero output layers too
    params = jax.jit(
        lambda: jax.tree_util.tree_map(perturb, model.init(jax.random.key(1), x, c_noise))
    )()
    return model, params, x, c_noise


def test_remat_keeps_parameters_outputs_and_gradients():
    model, params, x, c_noise = perturbed_tiny_unet(model_channels=8, x_shape=(1, 8, 8, 3))
    remat = build_model("tiny", 3, remat=True, model_channels=8)
    shapes = jax.eval_shape(lambda: remat.init(jax.random.key(1), x, c_noise))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    grad = lambda m: jax.jit(
        jax.grad(
            lambda p: jnp.sum(
                m.apply(p, x, c_noise, train=True, rngs={"dropout": jax.random.key(3)}) ** 2
            )
        )
    )(params)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        grad(model),
        grad(remat),
    )


def test_bfloat16_compute_runs_the_convolutions_in_bf16_with_float32_parameters():
    model, params, x, c_noise = perturbed_tiny_unet()
    fast = build_model("tiny", 3, compute_dtype="bfloat16")
    hlo = jax.jit(fast.apply).lower(params, x, c_noise).as_text()
    convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert convs and all("bf16" in line for line in convs), "every convolution computes in bfloat16"
    out, ref = fast.apply(params, x, c_noise), model.apply(params, x, c_noise)
    assert out.dtype == jnp.float32 and all(
        p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params)
    )
    # bf16 keeps 8 bits of mantissa: the outputs agree to a few per cent of their scale, not
    # exactly.
    error = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    assert 1e-5 < error < 0.05, error


def test_split_by_sigma_routes_each_row_to_one_network_and_trains_only_that_one():
    import jax
    import jax.numpy as jnp
    import numpy as np

    model = build_model("mlp_small", 1, split_sigma=1.5, width=32, num_blocks=1, emb_channels=16)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
    c_noise = jnp.log(jnp.array([0.1, 1.49, 1.5, 20.0])) / 4
    params = model.init(jax.random.key(1), x, c_noise)
    assert set(params["params"]) == {"low", "high"}
    single = build_model("mlp_small", 1, width=32, num_blocks=1, emb_channels=16)
    out = model.apply(params, x, c_noise)
    low = single.apply({"params": params["params"]["low"]}, x, c_noise)
    high = single.apply({"params": params["params"]["high"]}, x, c_noise)
    np.testing.assert_allclose(out[:2], low[:2], rtol=1e-6)
    np.testing.assert_allclose(out[2:], high[2:], rtol=1e-6)
    # a loss on the high-noise rows only gives the low network zero gradient
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x[2:], c_noise[2:]) ** 2))(params)
    assert all(
        float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads["params"]["low"])
    )
    assert any(
        float(jnp.abs(g).max()) > 0.0 for g in jax.tree_util.tree_leaves(grads["params"]["high"])
    )


def test_local_cnn_sees_a_9x9_window_only():
    """The low-noise network cannot store an image's identity: an output pixel depends on the input
    within 4 pixels of it and on nothing beyond."""
    import jax
    import jax.numpy as jnp

    model = build_model("local_cnn", 1)
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 1))
    params = model.init(jax.random.key(1), x, jnp.zeros((1,)))
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1, params
    )  # move the near-zero output layer off zero
    jac = jax.jacobian(lambda v: model.apply(params, v, jnp.zeros((1,)))[0, 8, 8, 0])(x)[0, :, :, 0]
    rows, cols = jnp.nonzero(jnp.abs(jac) > 0)
    assert (
        int(rows.min()) == 4
        and int(rows.max()) == 12
        and int(cols.min()) == 4
        and int(cols.max()) == 12
    )


@pytest.mark.parametrize("resample_filter", [(1, 1), (1, 3, 3, 1)], ids=["ddpmpp", "ncsnpp"])
def test_cpu_resampling_as_shifted_views_is_the_same_function(resample_filter):
    """The FIR up/down sampling the CPU backend runs as shifted views equals the depthwise
    convolutions (kept on GPU/TPU), forward and backward, at every padding the U-Net uses."""
    from ambient_jax.nets import unet

    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 5))
    f_pad = (len(resample_filter) - 1) // 2
    for pad in sorted({0, f_pad}):
        for conv_form, shifted in (
            (unet.fir_downsample_conv, unet.fir_downsample_shifted),
            (unet.fir_upsample_conv, unet.fir_upsample_shifted),
        ):
            a, b = conv_form(x, resample_filter, pad), shifted(x, resample_filter, pad)
            np.testing.assert_allclose(b, a, atol=1e-6)
            w = jax.random.normal(jax.random.key(2), a.shape)
            grad = lambda fn: jax.grad(lambda v: jnp.sum(fn(v, resample_filter, pad) * w))(x)
            np.testing.assert_allclose(grad(shifted), grad(conv_form), atol=1e-5)


def test_cpu_explicit_padding_of_the_residual_input_conv_is_the_same_function(monkeypatch):
    """The residual encoder's conv + FIR downsampling with its extra padding as a separate pad
    (the CPU form) equals the padded convolution the other backends run, forward and backward."""
    from ambient_jax.nets import unet

    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 5))
    module = unet.Conv(7, 3, down=True, fused_resample=True, resample_filter=(1, 3, 3, 1))
    params = module.init(jax.random.key(1), x)
    w = jax.random.normal(jax.random.key(2), (2, 8, 8, 7))

    def with_form(explicit, fn):
        monkeypatch.setattr(unet, "EXPLICIT_PADDING_ON_CPU", explicit)
        return fn()

    loss = lambda p, x: jnp.sum(module.apply(p, x) * w)
    value_and_grads = lambda: jax.value_and_grad(loss, argnums=(0, 1))(params, x)
    explicit, padded = with_form(True, value_and_grads), with_form(False, value_and_grads)
    # two forms compared, not one: the CPU form's forward has one more pad, before the conv
    pads = lambda: str(jax.make_jaxpr(lambda x: module.apply(params, x))(x)).count(" pad[")
    assert with_form(True, pads) == with_form(False, pads) + 1
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), explicit, padded
    )
    # and both are the definition: zero-pad by 2, 3x3 conv, then the stride-2 FIR filter
    kernel, bias = params["params"]["Conv_0"]["kernel"], params["params"]["Conv_0"]["bias"]
    conv = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), [(2, 2)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    expected = unet.fir_downsample_conv(conv + bias, (1, 3, 3, 1), 0)
    cpu_form = with_form(True, lambda: module.apply(params, x))
    np.testing.assert_allclose(cpu_form, expected, rtol=1e-5, atol=1e-5)


# XLA's default list of YNNPACK fusion types with the convolutions put back: this compilation's
# convolutions run in YNNPACK, as they do without ambient_jax.xla_cpu's flag.
YNNPACK_CONVOLUTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
}


def _conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_cpu_convolutions_run_in_xla_not_ynnpack():
    """The test process starts JAX as the programs do (ambient_jax.xla_cpu's flags): a
    convolution compiles to XLA's own kernel, and the per-compilation option the other tests use
    puts it back into YNNPACK."""
    x, k = jnp.ones((2, 8, 8, 32)), jnp.ones((3, 3, 32, 32))  # YNNPACK takes 32 channels, not 16
    lowered = jax.jit(_conv).lower(x, k)
    assert "__ynn_fusion" not in lowered.compile().as_text()
    assert "__ynn_fusion" in lowered.compile(compiler_options=YNNPACK_CONVOLUTIONS).as_text()


def test_cpu_convolutions_outside_ynnpack_are_the_same_function():
    """A 3x3 convolution and its gradients with XLA's kernels and with YNNPACK's."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    k = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) / 17
    w = jax.random.normal(jax.random.key(2), (2, 8, 8, 32))
    value_and_grads = jax.jit(
        jax.value_and_grad(lambda x, k: jnp.sum(_conv(x, k) * w), argnums=(0, 1))
    ).lower(x, k)
    xla_compiled = value_and_grads.compile()
    ynn_compiled = value_and_grads.compile(compiler_options=YNNPACK_CONVOLUTIONS)
    assert "__ynn_fusion" in ynn_compiled.as_text()  # two kernels compared, not one
    xla, ynn = xla_compiled(x, k), ynn_compiled(x, k)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), xla, ynn
    )


@pytest.fixture(scope="module")
def tiny_unet_cpu_run():
    """(logged metrics, params) of three train steps of the tiny U-Net as the programs run it on
    a CPU: FIR resampling as shifted views, convolutions in XLA's kernels."""
    from test_parallel import run_steps

    from ambient_jax.nets import unet

    assert unet.SHIFTED_RESAMPLING_ON_CPU
    return run_steps("jit", 1, changes={"model.preset": "tiny"})


def assert_same_loss_curve(run, reference):
    np.testing.assert_allclose(run[0], reference[0], rtol=2e-5, atol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), run[1], reference[1]
    )


def test_cpu_convolutions_outside_ynnpack_train_the_same_loss_curve(tiny_unet_cpu_run):
    """Three train steps of the tiny U-Net with XLA's convolutions (the programs' CPU setting)
    and with YNNPACK's (XLA's default)."""
    from test_parallel import run_steps

    changes = {"model.preset": "tiny"}
    ynn = run_steps("jit", 1, changes=changes, compiler_options=YNNPACK_CONVOLUTIONS)
    assert_same_loss_curve(ynn, tiny_unet_cpu_run)


def test_cpu_flags_join_the_users_xla_flags():
    """ambient_jax.xla_cpu adds its flags to XLA_FLAGS, leaves a flag the user set as set, and adds
    nothing on a jaxlib release whose XLA may not know them (XLA stops on unknown flags)."""
    from ambient_jax import xla_cpu

    ours = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    assert xla_cpu.with_cpu_flags("", "0.10.2") == ours
    assert (
        xla_cpu.with_cpu_flags("--xla_force_host_platform_device_count=8 ", "0.11.0")
        == f"--xla_force_host_platform_device_count=8 {ours}"
    )
    users = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert xla_cpu.with_cpu_flags(users, "0.10.2") == users
    assert xla_cpu.with_cpu_flags("--xla_dump_to=/tmp/x", "0.12.0") == "--xla_dump_to=/tmp/x"
    assert xla_cpu.with_cpu_flags("", "0.9.1") == ""
    assert ours in os.environ["XLA_FLAGS"]  # conftest started JAX with them, as the programs do


def test_tests_compile_with_most_optimisations_off_unless_marked():
    """tests/conftest.py: a test compiles with XLA's most optimisations off (a tiny network's
    compile costs more than they save), as JAX_DISABLE_MOST_OPTIMIZATIONS says."""
    wanted = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
    assert jax.config.values["jax_disable_most_optimizations"] is wanted


@pytest.mark.optimized
def test_a_test_marked_optimized_compiles_as_the_programs_do():
    assert jax.config.values["jax_disable_most_optimizations"] is False


def test_the_cpu_resampling_trains_the_same_loss_curve(tiny_unet_cpu_run, monkeypatch):
    """Three train steps of the tiny U-Net with the CPU's shifted-view resampling and with the
    convolutions the other backends run."""
    from test_parallel import run_steps

    from ambient_jax.nets import unet

    monkeypatch.setattr(unet, "SHIFTED_RESAMPLING_ON_CPU", False)
    conv = run_steps("jit", 1, changes={"model.preset": "tiny"})
    assert_same_loss_curve(conv, tiny_unet_cpu_run)


def test_the_cpu_explicit_padding_trains_the_same_loss_curve(monkeypatch):
    """Three train steps of a tiny U-Net with NCSN++'s residual encoder and [1,3,3,1] filter,
    with the residual input's extra padding as a separate pad (the CPU form) and in the
    convolution (the other backends' form)."""
    from test_parallel import run_steps

    from ambient_jax.nets import unet

    ncsnpp = {"encoder_type": "residual", "resample_filter": (1, 3, 3, 1)}
    run = lambda: run_steps("jit", 1, changes={"model.preset": "tiny"}, overrides=ncsnpp)
    explicit = run()
    monkeypatch.setattr(unet, "EXPLICIT_PADDING_ON_CPU", False)
    assert_same_loss_curve(run(), explicit)


class _FrozenStatisticsGroupNorm(nn.Module):
    """GroupNorm whose mean and variance are constants to differentiation: the Jacobian then
    follows the convolutions alone (the statistics couple every pixel with every other)."""

    num_groups: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        g = x.reshape(*x.shape[:-1], self.num_groups, c // self.num_groups)
        mean = jax.lax.stop_gradient(g.mean(axis=(1, 2, 4), keepdims=True))
        var = jax.lax.stop_gradient(g.var(axis=(1, 2, 4), keepdims=True))
        g = (g - mean) / jnp.sqrt(var + self.epsilon)
        scale = self.param("scale", nn.initializers.ones, (c,))
        return g.reshape(x.shape) * scale + self.param("bias", nn.initializers.zeros, (c,))


def _support(jac):
    """(first row, last row, first column, last column) where the 2-D Jacobian is not zero."""
    rows, cols = np.nonzero(np.abs(np.asarray(jac)) > 0)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def _centre_supports(monkeypatch, preset, size, names):
    """name -> (rows, cols) where the centre feature of that layer (or "output") depends on the
    input: the support of its Jacobian, with GroupNorm's statistics frozen (they would couple
    every pixel) and the near-zero layers lifted."""
    from ambient_jax.nets import unet

    monkeypatch.setattr(
        unet, "group_norm", lambda c, dtype=None: _FrozenStatisticsGroupNorm(min(32, c // 4))
    )
    model = build_model(preset, 1)
    x = jax.random.normal(jax.random.key(0), (1, size, size, 1))
    c_noise = jnp.zeros((1,))
    params = jax.jit(model.init)(jax.random.key(1), x, c_noise)
    params = jax.tree_util.tree_map(lambda p: p + 0.05, params)

    @jax.jit
    @jax.jacrev
    def centres(v):
        out, state = model.apply(params, v, c_noise, capture_intermediates=True)
        features = [
            out if n == "output" else state["intermediates"][n]["__call__"][0] for n in names
        ]
        return jnp.stack([f[0, f.shape[1] // 2, f.shape[2] // 2].sum() for f in features])

    return {n: _support(j) for n, j in zip(names, centres(x)[:, 0, :, :, 0])}


def test_unet_digits_preset_size_and_receptive_field_by_level(monkeypatch):
    """The digits U-Net: 1.26M parameters; through its convolutions a feature at 16x16 sees 3x3
    (input conv) and 7x7 (after the level's block) pixels, a feature at 8x8 the whole 16x16 image,
    and so does the output (the decoder adds the upsampled coarse levels to every pixel)."""
    assert param_count(build_model("unet_digits", 1), (1, 16, 16, 1)) == 1_259_393
    names = ("Conv_0", "UNetBlock_0", "UNetBlock_2", "output")
    support = _centre_supports(monkeypatch, "unet_digits", 16, names)
    assert support["Conv_0"] == (7, 9, 7, 9)  # the input conv: 3x3 around pixel (8, 8)
    assert support["UNetBlock_0"] == (5, 11, 5, 11)  # plus the block's two 3x3 convs: 7x7
    assert support["UNetBlock_2"] == (0, 15, 0, 15)  # level 8x8, pixel (4, 4): all of it
    assert support["output"] == (0, 15, 0, 15)


def test_unet_digits32_preset_size_and_receptive_field_by_level(monkeypatch):
    """The 32x32 digits U-Net: 1.77M parameters; a feature at 32x32 sees 3x3 (input conv) and
    7x7 pixels, one at 16x16 16x16 (after the downsampling block) and 24x24 (after the next), one
    at 8x8 the whole image."""
    assert param_count(build_model("unet_digits32", 1), (1, 32, 32, 1)) == 1_770_049
    names = ("Conv_0", "UNetBlock_0", "UNetBlock_1", "UNetBlock_2", "UNetBlock_3")
    support = _centre_supports(monkeypatch, "unet_digits32", 32, names)
    assert support["Conv_0"] == (15, 17, 15, 17)  # 3x3 around pixel (16, 16)
    assert support["UNetBlock_0"] == (13, 19, 13, 19)  # 7x7
    assert support["UNetBlock_1"] == (9, 24, 9, 24)  # level 16x16: 16x16 pixels
    assert support["UNetBlock_2"] == (5, 28, 5, 28)  # 24x24
    assert support["UNetBlock_3"] == (0, 31, 0, 31)  # level 8x8: all of it
