"""The shipped experiment configs load, pass the checks and carry the paper's settings."""

import importlib.util
import json
import os

import pytest

from ambient_jax.config import check_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


# name: (preset, batch, lr, Mimg, sampler steps, thresholds)
PAPER = {
    "cifar10": ("ddpmpp_cifar10", 512, 1e-3, 200, 18, (0.9, 0.925, 0.95)),
    "ffhq64": ("ncsnpp_ffhq64", 256, 1e-4, 30, 40, (0.85, 0.875, 0.9)),
    "imagenet64": ("ncsnpp_ffhq64", 256, 1e-4, 30, 40, (0.9, 0.925, 0.95)),
}


@pytest.mark.parametrize("name", sorted(PAPER))
@pytest.mark.parametrize("objective", ["ddpm", "ambient"])
@pytest.mark.parametrize("size,n_train", [("300", 300), ("1k", 1000), ("3k", 3000)])
def test_paper_configs_carry_the_paper_settings(name, objective, size, n_train):
    c = load(name, f"{objective},{size}")
    check_config(c)
    preset, batch, lr, mimg, steps, thresholds = PAPER[name]
    assert (c.loss.objective, c.data.n_train, c.model.preset) == (objective, n_train, preset)
    assert (c.train.batch_size, c.optim.lr, c.sample.num_steps, tuple(c.eval.thresholds)) == (
        batch,
        lr,
        steps,
        thresholds,
    )
    assert abs(c.train.num_steps * c.train.batch_size / 1e6 - mimg) < 0.01
    assert (c.optim.warmup_kimg, c.ema.halflife_kimg, c.ema.rampup_ratio) == (10_000, 500, 0.05)
    assert (c.loss.sigma_tn, c.loss.weighting, c.optim.weight_decay) == (0.5, "edm", 0.0)
    assert c.data.source == "tfds" and c.data.resolution == (32 if name == "cifar10" else 64)


@pytest.mark.parametrize("name", ["mnist", "mnist_unet", "mnist_unet32", *sorted(PAPER)])
def test_default_argument_loads(name):
    check_config(load(name))


@pytest.mark.parametrize("arg", ["ambient", "ambient,500", "edm,1k", "ambient,1k,0.5"])
def test_bad_paper_argument_is_one_clear_error(arg):
    with pytest.raises(ValueError, match="OBJECTIVE,SIZE"):
        load("cifar10", arg)


GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "paper_configs.json")


def test_paper_configs_equal_their_recorded_dicts():
    """Every paper config, field for field, as recorded when the recipes lived in the library
    (tests/golden/paper_configs.json): moving or reshaping config code must not change a run.
    (Since then model.overrides lists every overridable field, unset = None = the preset's own,
    and the deliberate changes below.)"""
    with open(GOLDEN) as f:
        recorded = json.load(f)
    assert len(recorded) == 18
    for key, expected in recorded.items():
        name, arg = key.split(":")
        now = json.loads(load(name, arg).to_json_best_effort(sort_keys=True))
        assert set(now["model"]["overrides"].values()) == {None}
        now["model"]["overrides"] = {}
        # Changed on purpose since the record: EDM's augment pipe at the paper's probability
        # replaces plain flips, and the noisy copies' own seed.
        assert now["data"].pop("augment_p") == (0.12 if name == "cifar10" else 0.15), key
        assert now["data"].pop("augment_pipe") == "edm" and now["loss"].pop("noise_seed") == 0
        assert now["data"]["augment_flip"] is False and expected["data"]["augment_flip"] is True
        now["data"]["augment_flip"] = True
        # Added since: data of mixed quality, off (no corrupted images, no per-image gate).
        assert now["data"].pop("corrupt_count") == 0, key
        for field in (
            "corrupt_kind",
            "corrupt_level",
            "corrupt_seed",
            "corrupt_keep_heldout",
            "corrupt_sigma_tn",
            "corrupt_sampling",
        ):
            now["data"].pop(field)
        # Added since: other classes' digits and window tops (Omni's low-noise half), off.
        assert (
            now["data"].pop("corrupt_classes") == []
            and now["data"].pop("corrupt_sigma_max") == "none"
            and now["data"].pop("bounded_share") == -1.0
        ), key
        assert now["loss"].pop("switch_ratio") == 1.0 and now["loss"].pop("switch_offset") == 0.0
        # Added since: class selection (every class) and starting from a trained run (off).
        assert now["data"].pop("classes") == [], key
        assert now.pop("finetune") == {
            "init_from": "",
            "keep_ema": False,
            "keep_optimizer": False,
            "train_above": 0.0,
        }, key
        # Added since: the preconditioning, EDM's (the others are for converted networks).
        assert now["model"].pop("precond")["kind"] == "edm", key
        assert now == expected, key


def test_every_package_and_the_configs_are_installed():
    """setup.cfg lists the packages by name (configs/ installs as ambient_jax.configs): a new
    sub-package missing from that list would be left out of a wheel."""
    import configparser

    root = os.path.join(os.path.dirname(__file__), "..")
    setup = configparser.ConfigParser()
    setup.read(os.path.join(root, "setup.cfg"))
    listed = set(setup["options"]["packages"].split())
    found = {
        os.path.relpath(d, root).replace(os.sep, ".")
        for d, _, names in os.walk(os.path.join(root, "ambient_jax"))
        if "__init__.py" in names
    }
    assert listed == found | {"ambient_jax.configs"}
    assert "ambient_jax.configs = configs" in setup["options"]["package_dir"]
    from ambient_jax.programs.common import DEFAULT_CONFIG

    assert os.path.samefile(DEFAULT_CONFIG, os.path.join(CONFIG_DIR, "mnist.py"))


def test_mnist_states_no_preset_sizes_so_presets_switch():
    """--config.model.preset=tiny on configs/mnist.py builds the U-Net (no MLP sizes leak)."""
    import jax

    from ambient_jax import nets
    from ambient_jax.config import complete, image_shape
    from ambient_jax.training import train_state

    c = load("mnist")
    assert set(c.model.overrides.to_dict().values()) == {None}
    c.model.preset = "tiny"
    check_config(c)

    def shapes(model):  # the parameters' tree, without computing them
        return jax.eval_shape(lambda: nets.init_params(model, image_shape(c), jax.random.key(0)))

    params = shapes(train_state.network(complete(c), c.data.channels))
    expected = shapes(nets.build_model("tiny", 1))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)


def test_restated_preset_values_are_not_a_config_change():
    """A run saved when configs/mnist.py wrote out mlp_small's own sizes resumes under today's
    file; a size that really differs is still a change."""
    from ambient_jax.config import config_differences

    new = load("mnist")
    old = load("mnist")
    old.model.overrides.width, old.model.overrides.num_blocks = 1024, 2
    old.model.overrides.emb_channels, old.model.overrides.dropout = 256, 0.0
    assert config_differences(old, new) == []
    old.model.overrides.width = 512
    assert config_differences(old, new) == ["model.overrides.width"]


@pytest.mark.parametrize("objective", ["ddpm", "ambient"])
def test_mnist_unet32_is_mnist_unet_at_32x32_with_its_four_levels(objective):
    """configs/mnist_unet32.py changes the resolution and the network, nothing else."""
    base, unet32 = load("mnist_unet", objective).to_dict(), load("mnist_unet32", objective)
    unet32 = unet32.to_dict()
    changed = {
        (section, field)
        for section in base
        for field in base[section]
        if base[section][field] != unet32[section][field]
    }
    assert changed == {("data", "resolution"), ("model", "preset")}
    assert (unet32["data"]["resolution"], unet32["model"]["preset"]) == (32, "unet_digits32")


@pytest.mark.parametrize("objective", ["ddpm", "ambient"])
def test_mnist_unet_is_mnist_with_the_unet_and_its_own_learning_rate(objective):
    """configs/mnist_unet.py changes the network and what goes with it, nothing else."""
    base, unet = load("mnist", objective).to_dict(), load("mnist_unet", objective).to_dict()
    changed = {
        (section, field)
        for section in base
        for field in base[section]
        if base[section][field] != unet[section][field]
    }
    assert changed == {
        ("model", "preset"),
        ("optim", "lr"),
        ("eval", "carlini_k"),
        ("train", "checkpoint_every"),
    }
    assert (unet["model"]["preset"], unet["optim"]["lr"], unet["eval"]["carlini_k"]) == (
        "unet_digits",
        1e-3,
        20,
    )


def test_the_preconditioning_is_checked_and_a_split_network_needs_edms():
    from ambient_jax.config import base_config, check_config

    def refused(says, **fields):
        c = base_config()
        for name, value in fields.items():
            c.model.precond[name.split("__")[1]] = value
        with pytest.raises(ValueError, match=says):
            check_config(c)

    refused(r"model.precond.kind: must be one of \('edm', 'vp', 've', 'iddpm'\)", precond__kind="x")
    refused("model.precond.beta_d: must be > 0, got -1", precond__beta_d=-1.0)
    c = base_config()
    c.model.precond.kind, c.model.split_sigma = "vp", 1.0
    with pytest.raises(ValueError, match="model.split_sigma: .* needs model.precond.kind='edm'"):
        check_config(c)
    c.model.precond.kind = "iddpm"
    c.model.split_sigma = 0.0
    check_config(c)  # one network under iDDPM's coefficients: a valid run
