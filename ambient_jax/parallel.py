"""Devices, meshes and shardings: the same code on 1 CPU, 8 GPUs or a TPU pod.

* Multi-process start-up: `initialize(config)` calls jax.distributed.initialize() when the job
  spans several processes: auto-detected on TPU pods, Slurm and Open MPI, or given explicitly
  (parallel.coordinator_address / num_processes / process_id) for anything else.
* A mesh with one "data" axis over all devices (parallel.num_devices to use fewer); a model axis
  can be added to the mesh shape later without touching the step, which only names "data".
* Parameters and the small training subset are replicated; batches are sharded on "data".
* Per-host input becomes one global array with jax.make_array_from_process_local_data.
"""

import os
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ambient_jax.checks import need, need_each
from ambient_jax.types import Config, PyTree

DATA_AXIS = "data"


def _cluster_detected():
    """True when an environment that jax.distributed can auto-detect runs several processes."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    # TPU pod slices: every worker sees the list of worker hostnames.
    return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize(parallel_config: Config) -> None:
    """Start jax.distributed when the job spans several processes; a no-op otherwise."""
    if jax.distributed.is_initialized():
        return
    explicit = parallel_config.coordinator_address
    if explicit:
        if parallel_config.cpu_collectives:
            jax.config.update("jax_cpu_collectives_implementation", parallel_config.cpu_collectives)
        jax.distributed.initialize(
            coordinator_address=explicit,
            num_processes=int(parallel_config.num_processes),
            process_id=int(parallel_config.process_id),
        )
    elif _cluster_detected():
        jax.distributed.initialize()


def make_mesh(
    parallel_config: Config | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A 1-D ("data",) mesh over `devices` (default: all, or the first parallel.num_devices)."""
    if devices is None:
        devices = jax.devices()
        wanted = int(parallel_config.num_devices) if parallel_config is not None else 0
        if wanted:
            if wanted > len(devices):
                raise ValueError(
                    f"parallel.num_devices = {wanted} but only {len(devices)} devices are visible"
                )
            devices = devices[:wanted]
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch(batch_size: int, mesh: Mesh, field: str = "train.batch_size") -> None:
    if batch_size % mesh.size:
        raise ValueError(
            f"{field} = {batch_size} does not divide over {mesh.size} devices; use a multiple of "
            f"{mesh.size}"
        )


def round_up_to_devices(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's device count that is at least batch_size."""
    return -(-batch_size // mesh.size) * mesh.size


def process_rows(
    batch_size: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """The slice of a global batch's rows that one process feeds (all of them on one host)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    per_process = batch_size // count
    return slice(index * per_process, (index + 1) * per_process)


def global_replicated(array: np.ndarray | jax.Array, mesh: Mesh) -> jax.Array:
    """A host array that every process holds in full -> one replicated global array."""
    return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(array))


def place_replicated(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array of a pytree (host or device) -> replicated over the mesh, on every process."""
    return jax.tree_util.tree_map(lambda a: global_replicated(np.asarray(a), mesh), tree)


def global_batch(local_rows: np.ndarray | jax.Array, mesh: Mesh) -> jax.Array:
    """This process's rows of a batch -> the global batch sharded on "data"."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), np.asarray(local_rows))


def to_host(array: jax.Array) -> np.ndarray:
    """A (possibly multi-process) global array -> the full numpy array on every host."""
    if jax.process_count() > 1 and not array.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def check_config(parallel: Config) -> None:
    """config.parallel values, each named (ValueError)."""
    need(parallel.mode in ("jit", "pmap"), "parallel.mode", "must be 'jit' or 'pmap'")
    need_each(
        "parallel",
        parallel,
        (
            ("num_devices", lambda v: v >= 0, "must be >= 0 (0 = every device)"),
            ("num_processes", lambda v: v >= 0, "must be >= 0"),
            ("process_id", lambda v: v >= 0, "must be >= 0"),
        ),
    )
