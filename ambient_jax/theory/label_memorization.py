"""Label memorization and influence estimates (Feldman and Zhang 2020), many models at once.

    mem(A, S, i)      = P[h(x_i) = y_i | h ~ A(S)] - P[h(x_i) = y_i | h ~ A(S \\ i)]
    infl(A, S, i, j)  = P[h(x'_j) = y'_j | h ~ A(S)] - P[h(x'_j) = y'_j | h ~ A(S \\ i)]

Estimated by training K models, model k on a random subset S_k of a fraction r of S, and
comparing the models whose subset held i with those whose did not:
    mem_i ~ mean_{k: i in S_k} 1[h_k(x_i) = y_i] - mean_{k: i not in S_k} 1[h_k(x_i) = y_i],
with standard error sqrt(p_in (1 - p_in) / K_in + p_out (1 - p_out) / K_out).

All K models train in one compiled program: the subset of model k is a 0/1 weight per example,
the K parameter sets are stacked and vmapped, the steps run in a lax.scan, and the model axis
is sharded over the devices when there are several.
"""

import functools
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ambient_jax import files, parallel, plots
from ambient_jax.data.sources import load_mnist
from ambient_jax.types import PyTree


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
    params = []
    for k, (fan_in, fan_out) in zip(
        jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])
    ):
        params.append(
            {
                "w": jax.random.normal(k, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in),
                "b": jnp.zeros(fan_out),
            }
        )
    return params


def mlp_logits(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def subset_masks(key: jax.Array, num_models: int, num_examples: int, fraction: float) -> jax.Array:
    """[K, n] 0/1: model k trains on a random subset of round(fraction * n) examples."""
    size = int(round(fraction * num_examples))

    def one(k):
        chosen = jax.random.permutation(k, num_examples)[:size]
        return jnp.zeros(num_examples).at[chosen].set(1.0)

    return jax.vmap(one)(jax.random.split(key, num_models))


def train_models(
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array,
    masks: jax.Array,
    num_classes: int,
    key: jax.Array,
    hidden: Sequence[int] = (256,),
    steps: int = 500,
    lr: float = 1e-3,
    batch_size: int = 128,
    mesh: Mesh | None = None,
) -> PyTree:
    """Train len(masks) MLPs, model k on the examples where masks[k] == 1. Returns stacked params.

    Each step model k draws batch_size examples from its own subset (uniformly, with
    replacement) and takes an Adam step on the cross-entropy.
    """
    x, y, masks = (
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.int32),
        jnp.asarray(masks, jnp.float32),
    )
    num_models = masks.shape[0]
    sizes = [x.shape[1], *hidden, num_classes]
    optimizer = optax.adam(lr)

    size = int(round(float(masks[0].sum())))

    def train_one(mask, k):
        k_init, k_steps = jax.random.split(k)
        params = init_mlp(k_init, sizes)
        members = jnp.argsort(-mask)[:size]  # the subset's example indices

        def step(carry, k_step):
            params, opt_state = carry
            index = members[jax.random.randint(k_step, (batch_size,), 0, size)]

            def loss(p):
                return optax.softmax_cross_entropy_with_integer_labels(
                    mlp_logits(p, x[index]), y[index]
                ).mean()

            grads = jax.grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(
            step, (params, optimizer.init(params)), jax.random.split(k_steps, steps)
        )
        return params

    keys = jax.random.split(key, num_models)
    run = jax.jit(jax.vmap(train_one))
    if mesh is not None and num_models % mesh.size == 0:
        models = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
        masks, keys = jax.device_put(masks, models), jax.device_put(keys, models)
    return run(masks, keys)


@jax.jit
def _correct(params, x, y):
    """[K, m] 1[h_k(x_j) = y_j] for stacked params."""
    return jax.vmap(lambda p: (jnp.argmax(mlp_logits(p, x), -1) == y).astype(jnp.float32))(params)


def in_out_difference(
    correct: np.ndarray | jax.Array, masks: np.ndarray | jax.Array
) -> tuple[np.ndarray, np.ndarray]:
    """Per column j: mean of correct[k, j] over models with masks[k, i] = 1 minus over the rest,
    for every i; returns (estimate [n, m], standard error [n, m]). correct [K, m], masks [K, n]."""
    masks = np.asarray(masks, np.float64)
    correct = np.asarray(correct, np.float64)
    k_in = masks.sum(0)[:, None]
    k_out = (1 - masks).sum(0)[:, None]
    if np.any(k_in == 0) or np.any(k_out == 0):
        raise ValueError(
            "every example must be in some subsets and out of others: use more models or 0 < "
            "fraction < 1"
        )
    p_in = masks.T @ correct / k_in
    p_out = (1 - masks).T @ correct / k_out
    stderr = np.sqrt(p_in * (1 - p_in) / k_in + p_out * (1 - p_out) / k_out)
    return p_in - p_out, stderr


def estimate(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    num_models: int = 200,
    fraction: float = 0.7,
    seed: int = 0,
    test_x: np.ndarray | None = None,
    test_y: np.ndarray | None = None,
    mesh: Mesh | None = None,
    **train_kwargs: Any,
) -> dict:
    """Memorization (and, with a test set, influence) estimates of every training example.

    Returns a dict: mem [n], mem_stderr [n], and with test data infl [n, m], infl_stderr,
    plus models_per_second (the vmapped trainer's throughput, compile excluded).
    """
    k_masks, k_train = jax.random.split(jax.random.key(seed))
    masks = subset_masks(k_masks, num_models, len(x), fraction)
    train = functools.partial(
        train_models, x, y, masks, num_classes, k_train, mesh=mesh, **train_kwargs
    )
    params = jax.block_until_ready(train())  # includes the compile
    start = time.perf_counter()
    params = jax.block_until_ready(train())
    seconds = time.perf_counter() - start
    train_correct = _correct(params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32))
    mem_all, se_all = in_out_difference(train_correct, masks)
    idx = np.arange(len(x))
    result = {
        "mem": mem_all[idx, idx],
        "mem_stderr": se_all[idx, idx],
        "models_per_second": num_models / seconds,
        "train_seconds": seconds,
        "masks": np.asarray(masks),
    }
    if test_x is not None:
        test_correct = _correct(
            params, jnp.asarray(test_x, jnp.float32), jnp.asarray(test_y, jnp.int32)
        )
        result["infl"], result["infl_stderr"] = in_out_difference(test_correct, masks)
    return result


def mnist_study(
    workdir: str,
    n_train: int = 1000,
    num_models: int = 200,
    fraction: float = 0.7,
    steps: int = 400,
    seed: int = 0,
) -> dict:
    """ambient-labelmem's study: mem and the top influence of n_train embedded MNIST digits (16x16),
    the rest of the 5,000 as the test set. Writes scores.npz, summary.json,
    most_least_memorized.png and memorization_histogram.png into workdir; returns the summary."""
    images, labels = load_mnist(16)
    order = np.random.RandomState(seed).permutation(len(images))
    train_idx, test_idx = np.sort(order[:n_train]), np.sort(order[n_train:])
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    mesh = parallel.make_mesh() if len(jax.devices()) > 1 else None
    result = estimate(
        flat[train_idx],
        labels[train_idx],
        10,
        num_models=num_models,
        fraction=fraction,
        seed=seed,
        test_x=flat[test_idx],
        test_y=labels[test_idx],
        mesh=mesh,
        steps=steps,
    )
    mem, stderr = result["mem"], result["mem_stderr"]
    files.makedirs(workdir)
    files.save_npz(
        os.path.join(workdir, "scores.npz"),
        compressed=True,
        mem=mem,
        mem_stderr=stderr,
        train_indices=train_idx,
        test_indices=test_idx,
        top_influence=result["infl"].max(axis=1),
        top_influence_test_index=test_idx[result["infl"].argmax(axis=1)],
    )
    ranked = np.argsort(-mem)
    summary = {
        "n_train": n_train,
        "num_models": num_models,
        "fraction": fraction,
        "steps": steps,
        "models_per_second": result["models_per_second"],
        "train_seconds": result["train_seconds"],
        "mean_mem": float(mem.mean()),
        "share_mem_above_0.5": float(np.mean(mem > 0.5)),
        "median_stderr": float(np.median(stderr)),
        "most_memorized": [
            {"index": int(train_idx[i]), "label": int(labels[train_idx[i]]), "mem": float(mem[i])}
            for i in ranked[:10]
        ],
    }
    files.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    picture = np.concatenate([images[train_idx[ranked[:16]]], images[train_idx[ranked[-16:]]]])
    plots.save_grid(picture, os.path.join(workdir, "most_least_memorized.png"), cols=16)
    plots.save_histogram(
        mem,
        os.path.join(workdir, "memorization_histogram.png"),
        "estimated label memorization mem(A, S, i)",
        "training examples",
        bins=40,
    )
    return summary
