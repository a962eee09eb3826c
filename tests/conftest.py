"""Test set-up: 8 fake CPU devices, the programs' CPU flags (set before JAX starts a backend), a
compilation cache shared by the test processes, and small shared helpers."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One fresh on-disk compilation cache for this session, inherited by the programs the tests start
# in subprocesses: a resumed or repeated run of the same configuration then loads its compiled
# step instead of compiling it again (XLA's compiles are most of those tests' time on 2 cores).
# Test processes started by pytest-xdist inherit the first process's folder
# (AMBIENT_TEST_XLA_CACHE), so a program compiled in one is loaded in the other; the process that
# made it removes it.
_COMPILATION_CACHE = os.environ.get("AMBIENT_TEST_XLA_CACHE")
if not _COMPILATION_CACHE:
    _COMPILATION_CACHE = tempfile.mkdtemp(prefix="ambient-jax-tests-xla-cache-")
    os.environ["AMBIENT_TEST_XLA_CACHE"] = _COMPILATION_CACHE
    atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
# Every compile, not only those over JAX's default second: a program started by a test compiles
# some 25 small functions (key derivation, initialisation, the sampler's latents) below that
# threshold, every time; loaded from the cache, a tiny training run takes 3.6 s instead of 6.0 s.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

# The tests compile with XLA's "most optimisations off" (LLVM at level 0, its expensive passes off),
# inherited by the programs they start: most tests compile a tiny network and run it a few steps,
# where optimising costs more than it saves (tests/test_nets.py: 364 s -> 215 s on a loaded 2-core
# machine; tests/test_training.py's programs: 540 s -> 390 s). Tests that run big networks on many
# images (Inception, DINOv2; the label-memorization estimator's 160 networks) carry the mark
# `optimized` and compile as the programs do (the FID parity test: 115 s unoptimised against 75 s).
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the whole suite as the programs compile.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

from ambient_jax import xla_cpu  # noqa: E402

xla_cpu.use_cpu_flags()  # as the programs start JAX

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


def gaussian_denoiser(mu, std):
    """E[x0 | x0 + sigma n] for x0 ~ N(mu, std^2 I): mu + std^2 / (std^2 + sigma^2) (x - mu)."""

    def denoise(x, sigma):
        shrink = (std**2 / (std**2 + sigma**2)).reshape(-1, *([1] * (x.ndim - 1)))
        return mu + shrink * (x - mu)

    return denoise


def empirical_denoiser(points):
    """The exact denoiser of the empirical distribution of `points` [N, ...]: softmax-weighted
    mean."""
    flat = points.reshape(points.shape[0], -1)

    def denoise(x, sigma):
        xf = x.reshape(x.shape[0], -1)
        d2 = jnp.sum((xf[:, None, :] - flat[None, :, :]) ** 2, axis=-1)
        w = jax.nn.softmax(-d2 / (2 * sigma[:, None] ** 2), axis=-1)
        return (w @ flat).reshape(x.shape)

    return denoise


def nonlinear_denoiser(key, shape):
    """A fixed random nonlinear map, to check algebraic identities on something non-trivial."""
    d = int(jnp.prod(jnp.array(shape)))
    w = jax.random.normal(key, (d, d)) / jnp.sqrt(d)

    def denoise(x, sigma):
        xf = x.reshape(x.shape[0], -1)
        return jnp.tanh(xf @ w + jnp.log(sigma)[:, None]).reshape(x.shape)

    return denoise


@pytest.fixture(autouse=True)
def compile_as_marked(request):
    """A test marked `optimized` compiles with XLA's optimisations on, as the programs do."""
    if not request.node.get_closest_marker("optimized"):
        yield
        return
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def key():
    return jax.random.key(0)
