"""Orbax checkpoints of a :class:`~gatezoo.training.step.TrainState`.

A checkpoint is the flat list of the state's leaves, saved with orbax's ``StandardSave`` under
``<run>/checkpoints/<step>``; restoring unflattens them into the structure of a freshly
initialised state of the same config, so any pytree node type (NamedTuples of optax states,
nnx ``State``) round-trips exactly, bit for bit.

Orbax writes each step into a temporary folder and renames it only once every file is on disk,
so a process killed during a save leaves an unfinalised temporary folder that
:meth:`Checkpoints.latest_step` ignores (and the next manager deletes): the run restarts from the
previous complete checkpoint. Saves are synchronous, so a returned ``save`` is durable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints"]


class Checkpoints:
    """Saves every N steps, keeps the last ``keep``, restores the latest.

    Example:
      >>> # ckpt = Checkpoints("runs/x/checkpoints", keep=3)
      >>> # ckpt.save(500, state); step = ckpt.latest_step(); state = ckpt.restore(step, like=state)
    """

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=int(keep)),
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint (None if there is none)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> bool:
        """Writes ``state`` as checkpoint ``step`` (no-op if that step is already saved)."""
        step = int(step)
        if step in self._manager.all_steps():
            return False
        leaves = jax.tree_util.tree_leaves(state)
        item = {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}
        saved = self._manager.save(step, args=ocp.args.StandardSave(item), force=True)
        self._manager.wait_until_finished()
        return bool(saved)

    def restore(self, step: int, like: Any) -> Any:
        """Checkpoint ``step`` in the structure (and placement) of the state ``like``."""
        leaves, treedef = jax.tree_util.tree_flatten(like)
        target = {
            f"{i:05d}": ocp.utils.to_shape_dtype_struct(leaf) for i, leaf in enumerate(leaves)
        }
        item = self._manager.restore(int(step), args=ocp.args.StandardRestore(target))
        restored = [item[f"{i:05d}"] for i in range(len(leaves))]
        return jax.tree_util.tree_unflatten(treedef, restored)

    def close(self) -> None:
        self._manager.close()
