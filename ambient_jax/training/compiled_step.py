"""The step compiled for parallel.mode: jit over the device mesh (XLA shards the batch), or
pmap with explicit collectives behind an adapter that takes and returns the same replicated
state; lax.scan fuses several steps into one dispatch."""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from ambient_jax import parallel
from ambient_jax.training import train_state, train_step, training_data
from ambient_jax.types import PyTree


class Trainer:
    """The compiled step for parallel.mode. Both modes take and return the state replicated over
    the mesh (as checkpoints hold it) and the metrics of the global batch.

    `step(state, held)` trains on the training data held on device (train_step.HeldData); a
    streamed run (data.streaming) calls `step(state, rows)` with the global batch
    (train_step.Rows). `multi_step` fuses train.steps_per_dispatch steps (held data only).
    config.check_config has refused the settings this cannot run (parallel.mode, streaming with
    pmap or with several steps per dispatch).
    """

    def __init__(self, config, model, optimizer, schedule, mesh):
        parallel.check_batch(config.train.batch_size, mesh)
        self.mesh = mesh
        self.steps_per_dispatch = int(config.train.steps_per_dispatch)
        batch_size, step_root = config.train.batch_size, train_step.step_root_key(config)
        level_first = (
            training_data.mixed_quality(config) and config.data.corrupt_sampling == "level_first"
        )

        def gather(state, held):
            sigma = train_step.row_sigmas(config, step_root, state.step) if level_first else None
            return train_step.gather_batch(
                step_root, state.step, held, batch_size, sigma, config.data.bounded_share
            )

        self.multi_step = None
        if config.parallel.mode == "jit":
            repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
            body = functools.partial(
                train_step.make_step_body(config, model, optimizer, schedule),
                batch_sharding=sharded,
            )
            on_device = lambda state, held: body(state, gather(state, held))  # held: replicated
            compile_ = functools.partial(jax.jit, out_shardings=(repl, repl), donate_argnums=0)
            if config.data.streaming:
                self.step = compile_(body, in_shardings=(repl, sharded))
            else:
                self.step = compile_(on_device, in_shardings=(repl, repl))
                if self.steps_per_dispatch > 1:
                    self.multi_step = compile_(
                        scan_steps(on_device, self.steps_per_dispatch), in_shardings=(repl, repl)
                    )
        else:  # pmap
            body = train_step.make_step_body(
                config,
                model,
                optimizer,
                schedule,
                axis_name=parallel.DATA_AXIS,
                num_shards=mesh.size,
            )
            rows_per_device = batch_size // mesh.size

            def per_device(state, held):
                shard = jax.lax.axis_index(parallel.DATA_AXIS)
                mine = lambda a: jax.lax.dynamic_slice_in_dim(
                    a, shard * rows_per_device, rows_per_device
                )
                return body(state, jax.tree_util.tree_map(mine, gather(state, held)), shard=shard)

            self.step = PmapStep(per_device, mesh)
            if self.steps_per_dispatch > 1:
                self.multi_step = PmapStep(scan_steps(per_device, self.steps_per_dispatch), mesh)

    def place(self, tree: PyTree) -> PyTree:
        """Host arrays (a state, the training images) -> replicated over the mesh, as the step takes
        them."""
        return parallel.place_replicated(tree, self.mesh)


class PmapStep:
    """parallel.mode=pmap: a per-device step under jax.pmap, called like the jit step.

    pmap holds one copy of each argument per device along a leading axis. This adapter turns the
    replicated state (and images) into that form on entry and back on exit, on the devices (each
    device's copy gains or loses the axis in one dispatch), so the loop and checkpoints see one
    state form in both modes.
    """

    def __init__(self, per_device, mesh):
        if jax.process_count() > 1:
            raise ValueError(
                "parallel.mode=pmap runs on one host here; use parallel.mode=jit across hosts"
            )
        self.mesh, self.devices = mesh, list(mesh.devices.flat)
        self.run = jax.pmap(
            per_device, axis_name=parallel.DATA_AXIS, devices=self.devices, donate_argnums=0
        )
        self.add_axis = jax.jit(lambda leaves: [a[None] for a in leaves])
        self.drop_axis = jax.jit(lambda leaves: [a[0] for a in leaves])
        self.held_given = None  # the last training data given, and its per-device form
        self.held_per_device = None

    def __call__(
        self, state: train_state.TrainState, held: train_step.HeldData
    ) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
        if self.held_given is not held:
            self.held_given, self.held_per_device = held, self.per_device_copies(held)
        state, metrics = self.run(self.per_device_copies(state), self.held_per_device)
        return self.replicated(state), jax.tree_util.tree_map(lambda m: m[0], metrics)

    def _regroup(self, tree, convert, shape, sharding):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        by_device = [{s.device: s.data for s in a.addressable_shards} for a in leaves]
        converted = [convert([shards[d] for shards in by_device]) for d in self.devices]
        out = [
            jax.make_array_from_single_device_arrays(shape(a), sharding, [c[i] for c in converted])
            for i, a in enumerate(leaves)
        ]
        return jax.tree_util.tree_unflatten(treedef, out)

    def per_device_copies(self, tree: PyTree) -> PyTree:
        return self._regroup(
            tree,
            self.add_axis,
            lambda a: (len(self.devices), *a.shape),
            parallel.batch_sharded(self.mesh),
        )

    def replicated(self, tree: PyTree) -> PyTree:
        return self._regroup(
            tree, self.drop_axis, lambda a: a.shape[1:], parallel.replicated(self.mesh)
        )


def scan_steps(step: Callable, count: int) -> Callable:
    """`count` steps in one dispatch (lax.scan): metrics come back summed over the steps. Each
    step's draws depend on state.step only, so this trains the same model as `count` calls."""

    def steps(state, images):
        state, metrics = jax.lax.scan(lambda st, _: step(st, images), state, None, length=count)
        return state, jax.tree_util.tree_map(lambda m: jnp.sum(m, axis=0), metrics)

    return steps
