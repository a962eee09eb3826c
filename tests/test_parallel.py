"""Scale-out invariants on 8 fake CPU devices: device counts, jit vs pmap, hosts, pre-emption."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from child_env import child_env
from test_training import tiny_config

from ambient_jax import parallel
from ambient_jax.diffusion import generate
from ambient_jax.training import compiled_step, train, train_state, train_step

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "train_driver.py")
STEPS = 3


# Data of mixed quality: images 0-5 clean at sigma_tn 0, 6-9 clean with their copies at 0.5, 10-15
# corrupted at their own levels (three with the noise they lack added); the level each is usable
# from (sorted, as the trainer holds them).
MIXED = (
    np.array([0.0] * 6 + [0.5] * 4 + [0.3, 0.6, 0.9, 1.2, 1.5, 2.0], np.float32),
    np.array([True] * 10 + [False] * 6),
    np.array([0.0] * 6 + [0.5] * 4 + [0.0, 0.0, 0.0, 1.2, 1.5, 2.0], np.float32),
    np.array([0.0] * 10 + [0.3, 0.6, 0.9, 1.2, 1.5, 2.0], np.float32),
)
LEVEL_FIRST = {"data.corrupt_count": 6}  # a batch drawn for its rows' levels (the default)


def run_steps(
    mode,
    num_devices,
    steps=STEPS,
    changes=None,
    compiler_options=None,
    overrides=None,
    per_image=(),
):
    config = tiny_config(**(changes or {}))
    if config.model.preset != "mlp_small":  # the tiny MLP's sizes belong to mlp_small only
        for name in config.model.overrides:
            config.model.overrides[name] = None
    for name, value in (overrides or {}).items():  # network fields, e.g. encoder_type
        config.model.overrides[name] = value
    config.parallel.mode = mode
    mesh = parallel.make_mesh(devices=jax.devices()[:num_devices])
    model = train_state.network(config, 1)
    optimizer, schedule = train_state.make_optimizer(config.optim, config.train.batch_size)
    trainer = compiled_step.Trainer(config, model, optimizer, schedule, mesh)
    # the training images and their source indices (any: the noisy copies are keyed by them)
    images = trainer.place(
        train_step.HeldData(
            np.random.RandomState(0).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32),
            np.arange(100, 116, dtype=np.int32),
            *per_image,  # each image's sigma_tn and clean flag
        )
    )
    state = trainer.place(train_state.init_state(config, model, optimizer))
    step = trainer.step
    if compiler_options is not None:  # XLA options for this compilation only
        step = step.lower(state, images).compile(compiler_options=compiler_options)
    logged = []
    for _ in range(steps):
        state, m = step(state, images)
        logged.append(
            [
                float(m[k])
                for k in ("loss", "grad_norm", "loss_clean", "loss_ambient", "frac_ambient")
            ]
        )
    return np.array(logged), jax.device_get(state.params)


@pytest.fixture(scope="module")
def one_device_run():
    return run_steps("jit", 1)


@pytest.mark.parametrize("mode, num_devices", [("jit", 2), ("jit", 8), ("pmap", 8)])
def test_same_numbers_on_any_device_count_and_mode(one_device_run, mode, num_devices):
    logged, params = run_steps(mode, num_devices)
    ref_logged, ref_params = one_device_run
    # loss, grad_norm and the per-branch losses as logged: the same on any split of the batch
    np.testing.assert_allclose(logged, ref_logged, rtol=2e-5, atol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, ref_params
    )


@pytest.fixture(scope="module")
def one_device_mixed_run():
    return run_steps("jit", 1, per_image=MIXED, changes=LEVEL_FIRST)


@pytest.mark.parametrize("mode, num_devices", [("jit", 8), ("pmap", 8)])
def test_per_image_sigma_tn_gives_the_same_numbers_on_any_device_count_and_mode(
    one_device_mixed_run, mode, num_devices
):
    logged, params = run_steps(mode, num_devices, per_image=MIXED, changes=LEVEL_FIRST)
    ref_logged, ref_params = one_device_mixed_run
    assert 0 < ref_logged[:, 4].max() and ref_logged[:, 4].min() < 1  # both branches appear
    np.testing.assert_allclose(logged, ref_logged, rtol=2e-5, atol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, ref_params
    )


def test_a_batch_drawn_level_first_takes_each_row_from_the_images_usable_at_its_level():
    """Each row's image is one of those usable at the row's level (clean ones always, a corrupted
    one from its boundary up), uniformly; a level below every boundary takes the first image."""
    n, rows = 16, 8192
    held = train_step.HeldData(np.arange(n), np.arange(n), *MIXED)
    sigma = np.exp(np.random.RandomState(0).uniform(np.log(0.05), np.log(5.0), rows))
    got = train_step.gather_batch(jax.random.key(3), 7, held, rows, jnp.asarray(sigma, jnp.float32))
    position, usable_from = np.asarray(got.x0), MIXED[3]
    assert np.all(usable_from[position] <= sigma)
    for lo, hi, k in ((0.05, 0.3, 10), (0.6, 0.9, 12), (2.0, 5.0, 16)):
        at = (sigma >= lo) & (sigma < hi)
        counts = np.bincount(position[at], minlength=n)
        assert counts[k:].sum() == 0 and counts[:k].min() > 0.7 * at.sum() / k, counts
    for got_field, held_field in zip(got[1:5], held[1:5]):  # index, sigma_tn, clean, copy noise
        np.testing.assert_array_equal(got_field, held_field[position])


def test_a_batch_drawn_level_first_takes_each_row_from_the_images_whose_window_holds_it():
    """With window tops (Ambient Omni's out-of-distribution images) each row's image is one of
    those whose window [usable_from, usable_to] holds the row's level, uniformly over them: here
    clean images without a top, clean ones with a top (0.5 or 1.5) and corrupted ones with both
    bounds ([0.6, 2.0])."""
    n, rows = 16, 16384
    usable_from = np.array([0.0] * 10 + [0.6] * 6, np.float32)
    usable_to = np.array([np.inf] * 4 + [0.5] * 3 + [1.5] * 3 + [2.0] * 6, np.float32)
    held = train_step.HeldData(np.arange(n), np.arange(n), *MIXED[:3], usable_from, usable_to)
    sigma = np.exp(np.random.RandomState(1).uniform(np.log(0.05), np.log(5.0), rows))
    got = train_step.gather_batch(jax.random.key(4), 3, held, rows, jnp.asarray(sigma, jnp.float32))
    position = np.asarray(got.x0)
    assert np.all((usable_from[position] <= sigma) & (sigma <= usable_to[position]))
    for lo, hi in ((0.05, 0.5), (0.6, 1.5), (1.5, 2.0), (2.0, 5.0)):
        at = (sigma > lo) & (sigma < hi)
        usable = np.flatnonzero((usable_from <= lo) & (hi <= usable_to))
        counts = np.bincount(position[at], minlength=n)
        assert counts[np.setdiff1d(np.arange(n), usable)].sum() == 0, (lo, hi, counts)
        expected = at.sum() / len(usable)
        assert np.all(np.abs(counts[usable] - expected) < 5 * np.sqrt(expected)), (lo, counts)
    np.testing.assert_array_equal(got.sigma_max, usable_to[position])


def test_a_bounded_share_gives_the_images_with_a_top_that_share_of_the_levels_both_kinds_hold():
    """data.bounded_share 0.25: at levels where images with a window top and images without one
    are both usable, a quarter of the rows take one with a top, uniformly within each kind; at
    levels only one kind holds, every row is that kind's (here 4 unbounded images, 6 bounded at
    [0, 0.5] or [0, 1.5], 6 corrupted unbounded ones from 0.6)."""
    n, rows, share = 16, 32768, 0.25
    usable_from = np.array([0.0] * 10 + [0.6] * 6, np.float32)
    usable_to = np.array([np.inf] * 4 + [0.5] * 3 + [1.5] * 3 + [np.inf] * 6, np.float32)
    held = train_step.HeldData(np.arange(n), np.arange(n), *MIXED[:3], usable_from, usable_to)
    sigma = np.exp(np.random.RandomState(2).uniform(np.log(0.05), np.log(5.0), rows))
    got = train_step.gather_batch(
        jax.random.key(5), 3, held, rows, jnp.asarray(sigma, jnp.float32), share
    )
    position = np.asarray(got.x0)
    for lo, hi, share_there in ((0.05, 0.5, share), (0.6, 1.5, share), (1.5, 5.0, 0.0)):
        at = (sigma > lo) & (sigma < hi)
        counts = np.bincount(position[at], minlength=n)
        usable = (usable_from <= lo) & (hi <= usable_to)
        assert counts[~usable].sum() == 0, (lo, counts)
        for bounded, part in ((True, share_there), (False, 1 - share_there)):
            group = np.flatnonzero(usable & (np.isfinite(usable_to) == bounded))
            expected = at.sum() * part / max(len(group), 1)
            assert np.all(np.abs(counts[group] - expected) < 5 * np.sqrt(expected)), (
                lo, bounded, counts,
            )  # fmt: skip


def test_the_trainer_draws_its_batch_with_the_configs_bounded_share(monkeypatch):
    """data.bounded_share reaches the batch drawn level first (seen while tracing the step, which
    stops there, so nothing compiles)."""
    seen = []

    def gather(*args):
        seen.append(args[5:])
        raise LookupError("traced")

    monkeypatch.setattr(train_step, "gather_batch", gather)
    tops = np.array([np.inf] * 10 + [0.5] * 6, np.float32)
    changes = {**LEVEL_FIRST, "data.corrupt_sigma_max": "0.5", "data.bounded_share": 0.3}
    with pytest.raises(LookupError, match="traced"):
        run_steps("jit", 1, steps=1, per_image=(*MIXED, tops), changes=changes)
    assert seen == [(0.3,)]


def test_window_tops_of_inf_draw_todays_batch_and_train_todays_model(one_device_mixed_run):
    """Every image's top inf: the batch drawn level first through the [B, N] window mask is the
    prefix rule's, and the run trains the same model, bit for bit."""
    tops = np.full(16, np.inf, np.float32)
    held = train_step.HeldData(np.arange(16), np.arange(16), *MIXED)
    sigma = jnp.asarray(np.exp(np.random.RandomState(0).uniform(-3, 1.6, 4096)), jnp.float32)
    prefix = train_step.gather_batch(jax.random.key(3), 7, held, 4096, sigma)
    masked = train_step.gather_batch(
        jax.random.key(3), 7, held._replace(usable_to=tops), 4096, sigma
    )
    np.testing.assert_array_equal(prefix.x0, masked.x0)
    logged, params = run_steps("jit", 1, per_image=(*MIXED, tops), changes=LEVEL_FIRST)
    np.testing.assert_array_equal(logged, one_device_mixed_run[0])
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, one_device_mixed_run[1])


def test_every_image_clean_at_the_runs_sigma_tn_is_todays_step(one_device_run):
    """Today's objective as the special case of per-image sigma_tn: every image clean at the run's
    sigma_tn (0.5 in the tiny config) trains the same model, draw for draw."""
    everyone = (np.full(16, 0.5, np.float32), np.ones(16, bool))
    logged, params = run_steps("jit", 1, per_image=everyone)
    np.testing.assert_allclose(logged, one_device_run[0], rtol=1e-6, atol=1e-7)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        params,
        one_device_run[1],
    )


def test_batch_must_divide_over_devices():
    config = tiny_config(**{"train.batch_size": 6})
    model = train_state.network(config, 1)
    optimizer, schedule = train_state.make_optimizer(config.optim, 6)
    with pytest.raises(ValueError, match="train.batch_size = 6 does not divide over 8 devices"):
        compiled_step.Trainer(config, model, optimizer, schedule, parallel.make_mesh())


def test_restore_a_checkpoint_written_on_8_devices_onto_2(tmp_path):
    quiet = lambda _: None
    straight = train.train(tiny_config(**{"train.num_steps": 4}), str(tmp_path / "a"), log=quiet)
    train.train(tiny_config(**{"train.num_steps": 2}), str(tmp_path / "b"), log=quiet)
    two = tiny_config(**{"train.num_steps": 4})
    two.parallel.num_devices = 2
    resumed = train.train(two, str(tmp_path / "b"), log=quiet)
    assert (
        int(resumed.step) == 4
        and len(resumed.params["params"]["Dense_0"]["kernel"].sharding.device_set) == 2
    )
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        jax.device_get(resumed.params),
        jax.device_get(straight.params),
    )


def driver(workdir, changes, *extra, devices=8):
    env = child_env()
    return [sys.executable, DRIVER, str(workdir), changes, f"--devices={devices}", *extra], env


def load_dump(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def test_kill_9_during_a_save_then_resume_is_bit_identical(tmp_path):
    changes = '{"train.num_steps": 6, "train.checkpoint_every": 2}'
    cmd, env = driver(tmp_path / "straight", changes, f"--dump={tmp_path}/straight.npz")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    cmd, env = driver(tmp_path / "killed", changes, "--kill-after-save-at=4")
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cmd, env = driver(tmp_path / "killed", changes, f"--dump={tmp_path}/resumed.npz")
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    # Step 4's save was cut short, so it is either absent or complete; never half-read.
    assert "resumed from step 2" in resumed.stdout or "resumed from step 4" in resumed.stdout
    for a, b in zip(load_dump(f"{tmp_path}/straight.npz"), load_dump(f"{tmp_path}/resumed.npz")):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path):
    """kill -9 after the step-6 save started, truncate every file of the latest complete checkpoint
    (step 4), re-run: it resumes from step 2 with a warning naming both steps, drops the metrics
    rows
    logged past step 2, and ends with the parameters of an uninterrupted run."""
    changes = '{"train.num_steps": 8, "train.checkpoint_every": 2, "train.log_every": 1}'
    cmd, env = driver(tmp_path / "straight", changes, f"--dump={tmp_path}/straight.npz", devices=1)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    cmd, env = driver(tmp_path / "run", changes, "--kill-after-save-at=6", devices=1)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == -signal.SIGKILL
    ckpt = tmp_path / "run" / "checkpoints"
    latest = max(
        int(p)
        for p in os.listdir(ckpt)
        if p.isdigit() and (ckpt / p / "_CHECKPOINT_METADATA").exists()
    )
    assert latest in (4, 6)
    for root, _, names in os.walk(ckpt / str(latest)):
        for name in names:
            path = os.path.join(root, name)
            open(path, "r+b").truncate(os.path.getsize(path) // 2)
    cmd, env = driver(tmp_path / "run", changes, f"--dump={tmp_path}/resumed.npz", devices=1)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    previous = latest - 2
    assert (
        f"warning: checkpoint step {latest}" in result.stdout
        and f"using step {previous} instead" in result.stdout
    )
    assert f"resumed from step {previous}" in result.stdout
    steps = [
        json.loads(line)["step"]
        for line in open(tmp_path / "run" / "metrics.jsonl")
        if "loss" in line
    ]
    assert steps == list(range(1, 9)), "no duplicate steps after the resume"
    for a, b in zip(load_dump(f"{tmp_path}/straight.npz"), load_dump(f"{tmp_path}/resumed.npz")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # pre-emption and Ctrl-C
def test_a_stop_signal_saves_the_current_step_and_exits_cleanly(tmp_path, signum):
    cmd, env = driver(
        tmp_path / "run",
        '{"train.num_steps": 100000, "train.checkpoint_every": 100000, "train.log_every": 1}',
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("step 3/"):
            break
    if signum == signal.SIGTERM:  # meanwhile a second trainer on the same work dir is refused
        from test_training import TINY, cli, error_line

        second = error_line(cli("train", f"--workdir={tmp_path / 'run'}", *TINY))
        assert f"in use by pid {proc.pid}" in second
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    name = signal.Signals(signum).name
    assert f"{name}: saved a checkpoint at step" in out
    saved = int(out.split(f"{name}: saved a checkpoint at step ")[1].split(";")[0])
    assert saved >= 3 and sorted(os.listdir(tmp_path / "run" / "checkpoints"))[-1] == str(saved)
    assert f"finished {saved}" in out
    assert not os.path.exists(tmp_path / "run" / "LOCK"), "the lock is released on exit"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    """jax.distributed on one machine: 2 processes x 4 fake CPU devices = the 8-device run."""
    changes = '{"train.num_steps": 3}'
    cmd, env = driver(tmp_path / "one", changes, f"--dump={tmp_path}/one.npz")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    port = free_port()
    procs = []
    for i in range(2):
        cmd, env = driver(
            tmp_path / "two",
            changes,
            f"--process={i}",
            "--processes=2",
            f"--port={port}",
            f"--dump={tmp_path}/two.npz",
            devices=4,
        )
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
        assert "finished 3" in out
    for a, b in zip(load_dump(f"{tmp_path}/one.npz"), load_dump(f"{tmp_path}/two.npz")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == [
        "2",
        "3",
    ]  # the two latest, written once


def test_sampling_over_8_devices_gives_the_same_images_in_order():
    config = tiny_config()
    model = train_state.network(config, 1)
    optimizer, _ = train_state.make_optimizer(config.optim, 8)
    params = train_state.init_state(config, model, optimizer).params
    params = jax.tree_util.tree_map(lambda p: p + 0.01, params)  # make the output layer matter
    one = generate.generate(
        config,
        model,
        params,
        12,
        seed=5,
        batch_size=8,
        mesh=parallel.make_mesh(devices=jax.devices()[:1]),
    )
    eight = generate.generate(
        config, model, params, 12, seed=5, batch_size=8, mesh=parallel.make_mesh()
    )
    assert one.shape == (12, 16, 16, 1) and one.std() > 0
    np.testing.assert_allclose(
        one.astype(int), eight.astype(int), atol=1
    )  # uint8 rounding of float noise
    first_four = generate.generate(
        config, model, params, 4, seed=5, batch_size=8, mesh=parallel.make_mesh()
    )
    np.testing.assert_array_equal(first_four, eight[:4])
