"""The DINOv2 port against Hugging Face transformers' Dinov2Model, and the position-embedding
resizing
against torch.nn.functional.interpolate."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from ambient_jax.eval import convert, dinov2


def random_layerscale(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda1" in name or "cls_token" in name or "register_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


@pytest.mark.parametrize("swiglu, registers", [(False, False), (True, False), (False, True)])
def test_cls_features_match_hugging_face(swiglu, registers):
    torch.manual_seed(0)
    kwargs = dict(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=70, patch_size=14
    )
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kwargs))
    else:
        model = Dinov2Model(Dinov2Config(use_swiglu_ffn=swiglu, **kwargs))
    model = random_layerscale(model, 1)
    config, params = convert.dinov2_params_from_state_dict(
        {k: v.numpy() for k, v in model.state_dict().items()}, heads=4
    )
    assert (
        config.swiglu == swiglu and config.registers == (4 if registers else 0) and config.grid == 5
    )
    x = np.random.RandomState(0).rand(2, 70, 70, 3).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2))).pooler_output.numpy()
    ours = np.asarray(dinov2.DinoV2(config).apply(params, jnp.asarray(x), normalize=False))
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)
    normed = np.asarray(dinov2.DinoV2(config).apply(params, jnp.asarray(x)))
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("out", [5, 16])
@pytest.mark.parametrize("registers", [False, True])
def test_position_embedding_resizing_matches_torch_interpolate(out, registers):
    grid, width = 37, 8
    patch_pos = np.random.RandomState(out).randn(grid * grid, width).astype(np.float32)
    # The reference in float64: both sides' float32 rounding would otherwise dominate the
    # comparison.
    x = torch.from_numpy(
        patch_pos.reshape(1, grid, grid, width).transpose(0, 3, 1, 2).astype(np.float64)
    )
    if registers:
        ref = torch.nn.functional.interpolate(x, size=(out, out), mode="bicubic", antialias=True)
    else:
        scale = (out + 0.1) / grid
        ref = torch.nn.functional.interpolate(
            x, scale_factor=(scale, scale), mode="bicubic", antialias=False
        )
    ref = ref.numpy()[0].transpose(1, 2, 0).reshape(out * out, width)
    ours = np.asarray(
        dinov2.resize_position_embedding(jnp.asarray(patch_pos), grid, out, out, registers)
    )
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)


def test_paper_recipe_reflect_pads_to_multiples_of_14():
    images = np.random.RandomState(0).randint(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    x = np.asarray(dinov2.preprocess(images, "paper"))
    assert x.shape == (2, 42, 42, 3) and x.min() >= 0 and x.max() <= 1
    np.testing.assert_allclose(x[:, 5:37, 5:37], images / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x[:, 4], x[:, 6])  # reflection about the first image row
    assert dinov2.preprocess(images, "standard").shape == (2, 224, 224, 3)
    with pytest.raises(ValueError, match="recipe"):
        dinov2.preprocess(images, "resize")


def test_converted_dinov2_round_trips_through_a_saved_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = random_layerscale(
        Dinov2Model(
            Dinov2Config(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                image_size=70,
                patch_size=14,
                use_swiglu_ffn=True,
            )
        ),
        2,
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    path = convert.convert_dinov2(
        str(tmp_path / "w.safetensors"), heads=4, out=str(tmp_path / "w.msgpack")
    )
    config, params = convert.load_dinov2(path)
    direct_config, direct = convert.load_dinov2(str(tmp_path / "w.safetensors"), heads=4)
    assert config == direct_config
    x = jnp.asarray(np.random.RandomState(1).rand(1, 70, 70, 3).astype(np.float32))
    np.testing.assert_array_equal(
        dinov2.DinoV2(config).apply(params, x), dinov2.DinoV2(config).apply(direct, x)
    )
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(convert.ConversionError, match="not a readable DINOv2"):
        convert.load_dinov2(str(tmp_path / "bad.safetensors"), heads=4)


def test_a_foreign_state_dict_is_refused():
    with pytest.raises(convert.ConversionError, match="not a DINOv2"):
        convert.dinov2_params_from_state_dict({"fc.weight": np.zeros((2, 2))}, heads=1)
