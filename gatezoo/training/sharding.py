"""Devices: how many a run uses, the mesh over them, and joining several hosts.

A run with ``n > 1`` devices splits one of two axes over a one-axis :class:`jax.sharding.Mesh`
(``TrainConfig.shard``):

* ``"batch"`` (default, data parallelism): every training and evaluation batch is split along
  its batch axis over the mesh axis ``"batch"``; parameters, optimizer and instrument states are
  replicated, and XLA inserts the gradient all-reduce. The per-device batch is
  ``batch_size / n``, so ``n`` must divide the batch.
* ``"seeds"``: the slots (seeds, times the learning-rate trials) are split over the mesh axis
  ``"seeds"``: each device holds and trains ``slots / n`` of them, whole batches included, and
  no gradient crosses devices (only the small per-step metrics are gathered for the host).
  Each device runs its slots as one device runs all of them (``jax.shard_map`` of
  :func:`gatezoo.training.seeds.over_seeds`), so ``n`` must divide the number of slots. It
  suits many seeds or trials of a small model, and on a CPU the host devices put every core to
  work; ``"batch"`` suits a large batch.

Example (one slot per device, whatever the device count):
  >>> import jax, jax.numpy as jnp
  >>> n = jax.device_count()
  >>> mesh = run_mesh(None, "seeds", batch_size=3, slots=n)  # the batch need not divide
  >>> state = place_state({"w": jnp.zeros((n, 3)), "step": jnp.int32(0)}, mesh)
  >>> state["w"].addressable_shards[0].data.shape
  (1, 3)

Several hosts: set ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID`` on every host (or ``GATEZOO_DISTRIBUTED=auto`` on clusters JAX detects by
itself: SLURM, Open MPI, Cloud TPU) and run the same ``gatezoo train`` command everywhere, with a
run folder on a file system every host sees; :func:`initialize_distributed` then calls
:func:`jax.distributed.initialize` before anything touches a device, the mesh spans every host's
devices (each batch is computed in shards, one per device, so every process samples only its
own rows), checkpoints are written by all processes together (orbax) and only process 0 writes
the metric files. CPU processes all-reduce through gloo. ``tests/test_multihost.py`` runs this
path with two processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "SHARD_AXES",
    "initialize_distributed",
    "resolve_devices",
    "run_mesh",
    "batch_mesh",
    "seed_mesh",
    "replicate",
    "place_state",
    "constrain_batch",
    "shards_seeds",
    "gather_slots",
    "is_writer",
]

#: the axes a run can split over its devices (``TrainConfig.shard``)
SHARD_AXES = ("batch", "seeds")

_INITIALIZED = False


def initialize_distributed() -> bool:
    """Joins a multi-host run when the environment asks for it; returns True if it did."""
    global _INITIALIZED
    if _INITIALIZED:
        return True
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    auto = os.environ.get("GATEZOO_DISTRIBUTED", "").lower() == "auto"
    if not coordinator and not auto:
        return False
    kwargs: dict[str, Any] = {}
    if coordinator:
        kwargs["coordinator_address"] = coordinator
        for env, key in (("JAX_NUM_PROCESSES", "num_processes"),
                         ("JAX_PROCESS_ID", "process_id")):
            if os.environ.get(env):
                kwargs[key] = int(os.environ[env])
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        # without a collectives backend, CPU processes cannot all-reduce across hosts (the
        # default of JAX releases before gloo became it)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    _INITIALIZED = True
    return True


def resolve_devices(requested: int | None, batch_size: int, *, slots: int | None = None) -> int:
    """How many devices a run splits over: its batch (``slots=None``) or its ``slots`` seeds.

    ``None``: every device when the split axis (``batch_size``, or ``slots``) divides over them,
    otherwise one (with a note on stderr). An integer ``n``: exactly ``n``; it must not exceed
    the devices present and must divide that axis.

    Raises:
      ValueError: for an impossible request (one line naming the numbers).
    """
    available = jax.device_count()
    size = batch_size if slots is None else slots
    what = f"batch {size}" if slots is None else f"{size} slots (seeds x lr trials)"
    if requested is None:
        if available > 1 and size % available != 0:
            print(
                f"gatezoo: {what} does not divide over {available} devices; "
                "running on one device (pass --devices to choose)",
                file=sys.stderr,
            )
            return 1
        return available
    if requested > available:
        raise ValueError(f"devices={requested} but only {available} device(s) are present")
    if size % requested != 0:
        if slots is None:
            raise ValueError(
                f"batch size {size} does not divide over {requested} devices; choose a batch "
                f"that is a multiple of {requested} or fewer devices"
            )
        raise ValueError(
            f"shard='seeds': {what} do not divide over {requested} devices; choose a number "
            f"of seeds whose slots are a multiple of {requested} or fewer devices"
        )
    return requested


def run_mesh(devices: int | None, shard: str, *, batch_size: int, slots: int) -> Mesh | None:
    """The mesh of a run: :func:`batch_mesh` or :func:`seed_mesh` over
    :func:`resolve_devices` devices (None on one device).

    Raises:
      ValueError: an unknown ``shard`` or an impossible device count (one line).
    """
    if shard not in SHARD_AXES:
        raise ValueError(f"unknown shard {shard!r}; choose one of: {', '.join(SHARD_AXES)}")
    if shard == "seeds":
        return seed_mesh(resolve_devices(devices, batch_size, slots=slots))
    return batch_mesh(resolve_devices(devices, batch_size))


def _mesh(n_devices: int, axis: str) -> Mesh | None:
    if n_devices <= 1:
        return None
    return Mesh(np.asarray(jax.devices()[:n_devices]), (axis,))


def batch_mesh(n_devices: int) -> Mesh | None:
    """A one-axis mesh ``("batch",)`` over the first ``n_devices`` devices; None for one."""
    return _mesh(n_devices, "batch")


def seed_mesh(n_devices: int) -> Mesh | None:
    """A one-axis mesh ``("seeds",)`` over the first ``n_devices`` devices; None for one."""
    return _mesh(n_devices, "seeds")


def shards_seeds(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` splits the slots (a :func:`seed_mesh`) rather than the batch."""
    return mesh is not None and tuple(mesh.axis_names) == ("seeds",)


def _put(tree: Any, sharding_of: Any) -> Any:
    """Every leaf of ``tree`` as a global array with ``sharding_of(leaf)``; each process holds
    the whole tree (the same on all of them) and contributes its devices' part."""
    def put_array(x):
        x = np.asarray(x)
        sharding = sharding_of(x)
        if jax.process_count() > 1:
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
        return jax.device_put(x, sharding)

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            # typed PRNG keys (a model's RNG streams) travel as their raw key data; the slot
            # axis stays axis 0, so the data is split like any other stacked leaf
            placed = _put_like(jax.random.key_data(x), sharding_of(np.empty(x.shape)))
            return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(x))
        return put_array(x)

    return jax.tree_util.tree_map(put, tree)


def _put_like(data: Any, sharding: Any) -> Any:
    data = np.asarray(data)
    if jax.process_count() > 1:
        return jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
    return jax.device_put(data, sharding)


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Places every leaf of ``tree`` on all devices of ``mesh`` (no-op without a mesh)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    return _put(tree, lambda x: sharding)


def place_state(state: Any, mesh: Mesh | None) -> Any:
    """A run's state on ``mesh``: replicated under a batch mesh; under a seed mesh every leaf
    stacked over the slots (axis 0) split over the devices, scalars (the step) replicated."""
    if not shards_seeds(mesh):
        return replicate(state, mesh)
    split, whole = NamedSharding(mesh, PartitionSpec("seeds")), NamedSharding(mesh, PartitionSpec())
    return _put(state, lambda x: split if x.ndim else whole)


def constrain_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside jit: asks XLA to split axis 0 (the batch) of every leaf over a batch mesh.

    Under ``vmap`` over seeds the constraint applies to the per-seed arrays, so the seed axis
    stays whole on every device. A no-op without a mesh or under a seed mesh (each device then
    holds whole batches of its own slots).
    """
    if mesh is None or shards_seeds(mesh):
        return tree
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def gather_slots(tree: Any, mesh: Mesh | None) -> Any:
    """Inside jit: per-slot outputs (metrics) replicated on every device under a seed mesh, so
    every process can read them on the host; a no-op otherwise (they already are)."""
    if not shards_seeds(mesh):
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def is_writer() -> bool:
    """Only process 0 writes the run folder (metrics, config, events)."""
    return jax.process_index() == 0
