"""Starting a run from a trained one (config.finetune, ambient-train --init_from): the weights it
starts from, the optimizer and EMA it keeps or resets, a frozen noise range, a network that does
not fit, and an exact resume after a kill."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from child_env import child_env
from test_training import TINY, cli, tiny_config

from ambient_jax import checkpoint, parallel
from ambient_jax.data import load_split
from ambient_jax.diffusion import objective
from ambient_jax.training import finetune, run_dir, train, train_state

HERE = os.path.dirname(os.path.abspath(__file__))
quiet = lambda _: None


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained run (the TINY config, 3 steps): what the fine-tuning runs start from."""
    wd = str(tmp_path_factory.mktemp("finetune") / "source")
    train.train(tiny_config(**{"train.num_steps": 3}), wd, log=quiet)
    return wd


def first_state(config, workdir):
    """The state a run of `config` starts training from in a new work dir."""
    model = train_state.network(config, config.data.channels)
    optimizer = train_state.make_optimizer(config.optim, config.train.batch_size)[0]
    mesh = parallel.make_mesh(config.parallel)
    manager = checkpoint.make_manager(workdir)
    return run_dir.restore_or_init(config, workdir, model, optimizer, mesh, manager, True, quiet)


def leaves_equal(a, b):
    return all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def source_state(wd):
    config = tiny_config(**{"train.num_steps": 3})
    model = train_state.network(config, config.data.channels)
    optimizer = train_state.make_optimizer(config.optim, config.train.batch_size)[0]
    fresh = train_state.init_state(config, model, optimizer)
    return checkpoint.restore_latest(checkpoint.make_manager(wd, create=False), fresh, log=quiet)


def test_init_from_loads_exactly_the_saved_ema_weights_and_records_where(source, tmp_path):
    saved = source_state(source)
    _, _, ema = checkpoint.load_ema_params(source)
    assert not leaves_equal(
        saved.params, saved.ema_params
    )  # the EMA, not the raw weights, is meant
    wd = str(tmp_path / "tuned")
    state = first_state(tiny_config(**{"finetune.init_from": source}), wd)
    assert leaves_equal(state.params, ema) and leaves_equal(state.ema_params, ema)
    assert int(state.step) == 0
    fresh_opt = train_state.make_optimizer(tiny_config().optim, 8)[0].init(state.params)
    assert leaves_equal(state.opt_state, fresh_opt)  # a fresh optimizer by default
    record = json.load(open(os.path.join(wd, finetune.INIT_RECORD)))
    assert record["init_from"] == os.path.abspath(source) and record["step"] == 3

    kept = first_state(
        tiny_config(**{"finetune.init_from": source, "finetune.keep_optimizer": True}),
        str(tmp_path / "kept"),
    )
    assert leaves_equal(kept.opt_state, saved.opt_state) and leaves_equal(kept.params, ema)


def test_a_split_network_starts_with_the_trained_one_in_both_halves(source, tmp_path):
    _, _, ema = checkpoint.load_ema_params(source)
    config = tiny_config(**{"finetune.init_from": source, "finetune.train_above": 1.0})
    state = first_state(config, str(tmp_path / "split"))
    halves = state.params["params"]
    assert set(halves) == {"low", "high"}
    for half in ("low", "high"):
        assert leaves_equal(halves[half], ema["params"])


def test_a_frozen_range_gets_no_update_and_only_levels_above_it_train(source, tmp_path):
    _, _, ema = checkpoint.load_ema_params(source)
    config = tiny_config(
        **{"finetune.init_from": source, "finetune.train_above": 1.0, "train.num_steps": 3}
    )
    state = train.train(config, str(tmp_path / "frozen"), log=quiet)
    low, high = state.params["params"]["low"], state.params["params"]["high"]
    assert leaves_equal(low, ema["params"])  # bit-identical after 3 steps
    assert leaves_equal(state.ema_params["params"]["low"], ema["params"])
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(*map(jax.tree_util.tree_leaves, (high, ema["params"])))
    ]
    assert all(moved)  # every parameter of the trained half moved

    # the rows' levels: the log-normal conditioned on sigma >= the floor, the same draw where it
    # already was above
    keys = jax.random.split(jax.random.key(0), 4096)
    x0 = jnp.zeros((4096, 2, 2, 1))
    denoise = lambda x, s: x
    _, plain = objective.make_objective("ddpm")(denoise, x0, None, keys)
    _, floored = objective.make_objective("ddpm", level_floor=1.0)(denoise, x0, None, keys)
    above = plain["sigma"] >= 1.0
    assert bool(jnp.all(floored["sigma"] >= 1.0))
    np.testing.assert_array_equal(floored["sigma"][above], plain["sigma"][above])
    # P(sigma <= s | sigma >= 1) = (Phi(z_s) - Phi(z_1)) / (1 - Phi(z_1)), z = (ln s + 1.2) / 1.2
    from scipy.stats import norm

    for s in (1.5, 2.0, 4.0):
        z, z1 = (np.log(s) + 1.2) / 1.2, (np.log(1.0) + 1.2) / 1.2
        want = (norm.cdf(z) - norm.cdf(z1)) / (1 - norm.cdf(z1))
        assert abs(float(jnp.mean(floored["sigma"] <= s)) - want) < 0.03, (s, want)


def test_keep_ema_averages_at_the_full_half_life_from_the_first_step(source, tmp_path):
    _, _, ema = checkpoint.load_ema_params(source)
    changes = {"finetune.init_from": source, "train.num_steps": 1, "finetune.keep_ema": True}
    state = train.train(tiny_config(**changes), str(tmp_path / "kept"), log=quiet)
    config = tiny_config()
    beta = 0.5 ** (config.train.batch_size / (config.ema.halflife_kimg * 1000))
    want = jax.tree_util.tree_map(lambda e, p: beta * e + (1 - beta) * p, ema, state.params)
    for a, b in zip(*map(jax.tree_util.tree_leaves, (state.ema_params, want))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # reset (the default): the EMA ramps up as in a new run, so it nearly follows the new weights
    reset = train.train(
        tiny_config(**dict(changes, **{"finetune.keep_ema": False})),
        str(tmp_path / "reset"),
        log=quiet,
    )
    ramp = float(train_state.ema_beta(0, config.train.batch_size, config.ema))
    assert ramp < 1e-3 and beta > 0.999  # the two settings differ in kind here
    want = jax.tree_util.tree_map(lambda e, p: ramp * e + (1 - ramp) * p, ema, reset.params)
    for a, b in zip(*map(jax.tree_util.tree_leaves, (reset.ema_params, want))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_network_that_does_not_fit_is_refused_in_one_line(source, tmp_path):
    wd = str(tmp_path / "other")
    result = cli(
        "train", f"--workdir={wd}", *TINY, f"--init_from={source}",
        "--config.model.overrides.width=32", "--config.train.num_steps=2",
    )  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "does not fit the weights of" in lines[0]
    assert "parameter params/" in lines[0] and "shape" in lines[0], lines[0]
    assert not os.path.exists(os.path.join(wd, "checkpoints")), "nothing is written"

    missing = cli("train", f"--workdir={wd}", *TINY, f"--init_from={tmp_path}/nowhere")
    assert missing.returncode != 0 and "nowhere" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    cold = cli("train", f"--workdir={wd}", *TINY, "--config.finetune.train_above=1")
    assert cold.returncode != 0 and "finetune.train_above" in cold.stderr
    assert "needs finetune.init_from" in cold.stderr


def test_class_selection_takes_the_digits_of_those_classes(tmp_path):
    from ambient_jax.data.sources import load_mnist

    images, labels = load_mnist(16)
    config = tiny_config(**{"data.classes": (7,), "data.n_train": 30})
    split = load_split(config.data)
    sevens = images[labels == 7].astype(np.float32) / 127.5 - 1
    assert len(split.train) + len(split.heldout) == (labels == 7).sum() == 500
    assert all(any(np.array_equal(x, s) for s in sevens) for x in split.train[:5])
    bad = cli("train", f"--workdir={tmp_path}/x", *TINY, "--config.data.classes=(7,11)")
    assert bad.returncode != 0 and "data.classes" in bad.stderr


def test_resume_after_a_kill_is_bit_exact_while_fine_tuning(source, tmp_path):
    changes = json.dumps(
        {
            "train.num_steps": 6,
            "train.checkpoint_every": 2,
            "finetune.init_from": source,
            "finetune.train_above": 1.0,
        }
    )

    def driver(workdir, *extra):
        cmd = [sys.executable, os.path.join(HERE, "train_driver.py"), str(workdir), changes]
        return [*cmd, "--devices=1", *extra]

    env = child_env()
    straight = subprocess.run(
        driver(tmp_path / "straight", f"--dump={tmp_path}/straight.npz"),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr
    killed = subprocess.run(
        driver(tmp_path / "killed", "--kill-after-save-at=4"),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = subprocess.run(
        driver(tmp_path / "killed", f"--dump={tmp_path}/resumed.npz"),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stdout and "started from" not in resumed.stdout
    with np.load(f"{tmp_path}/straight.npz") as a, np.load(f"{tmp_path}/resumed.npz") as b:
        assert len(a.files) == len(b.files) > 0
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
