"""Devices: how many a run uses, the batch mesh over them, and joining several hosts.

A run with ``n > 1`` devices shards every training and evaluation batch along its batch axis
over a one-axis :class:`jax.sharding.Mesh` named ``"batch"`` (data parallelism); parameters,
optimizer and instrument states are replicated, and XLA inserts the gradient all-reduce. The
per-device batch is ``batch_size / n``, so ``n`` must divide the batch.

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
    "initialize_distributed",
    "resolve_devices",
    "batch_mesh",
    "replicate",
    "constrain_batch",
    "is_writer",
]

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


def resolve_devices(requested: int | None, batch_size: int) -> int:
    """How many devices a run shards its batch over.

    ``None``: every device when ``batch_size`` divides over them, otherwise one (with a note on
    stderr). An integer ``n``: exactly ``n``; it must not exceed the devices present and must
    divide ``batch_size``.

    Raises:
      ValueError: for an impossible request (one line naming the numbers).
    """
    available = jax.device_count()
    if requested is None:
        if available > 1 and batch_size % available != 0:
            print(
                f"gatezoo: batch {batch_size} does not divide over {available} devices; "
                "running on one device (pass --devices to choose)",
                file=sys.stderr,
            )
            return 1
        return available
    if requested > available:
        raise ValueError(f"devices={requested} but only {available} device(s) are present")
    if batch_size % requested != 0:
        raise ValueError(
            f"batch size {batch_size} does not divide over {requested} devices; choose a batch "
            f"that is a multiple of {requested} or fewer devices"
        )
    return requested


def batch_mesh(n_devices: int) -> Mesh | None:
    """A one-axis mesh ``("batch",)`` over the first ``n_devices`` devices; None for one."""
    if n_devices <= 1:
        return None
    return Mesh(np.asarray(jax.devices()[:n_devices]), ("batch",))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Places every leaf of ``tree`` on all devices of ``mesh`` (no-op without a mesh)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() > 1:
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
        )
    return jax.device_put(tree, sharding)


def constrain_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside jit: asks XLA to split axis 0 (the batch) of every leaf over the mesh.

    Under ``vmap`` over seeds the constraint applies to the per-seed arrays, so the seed axis
    stays whole on every device.
    """
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def is_writer() -> bool:
    """Only process 0 writes the run folder (metrics, config, events)."""
    return jax.process_index() == 0
