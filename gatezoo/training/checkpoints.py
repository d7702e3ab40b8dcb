"""Orbax checkpoints of a :class:`~gatezoo.training.step.TrainState` (or any pytree of arrays).

A checkpoint is the state as a nested dict keyed by the names along each leaf's pytree path
(``state.params["cell"]["W"]`` is stored under ``["params"]["cell"]["W"]``; the ``.value`` of an
nnx ``Variable`` is dropped, as in ``nnx.State.to_pure_dict``), saved with orbax's
``StandardSave`` under ``<run>/checkpoints/<step>/default``. So plain orbax reads a checkpoint by
parameter name, without gatezoo::

    ocp.StandardCheckpointer().restore("<run>/checkpoints/<step>/default")["params"]["cell"]["W"]

Restoring into a run fills the structure of a freshly initialised state of the same config, so
any pytree node type (NamedTuples of optax states, nnx ``State``) round-trips exactly, bit for
bit. Checkpoints written by earlier gatezoo versions (leaves under numbered keys ``"00000"``,
``"00001"``, ... in flattening order) still restore, into the same structure.

Orbax writes each step into a temporary folder and renames it only once every file is on disk,
so a process killed during a save leaves an unfinalised temporary folder that
:meth:`Checkpoints.latest_step` ignores (and the next manager deletes). A finalised step can
still be damaged afterwards (files deleted, a disk that filled up): :meth:`restore_latest` then
says which step it skips and why, moves it aside to ``damaged-<step>`` and restores the newest
step that reads back. Saves are synchronous, so a returned ``save`` is durable.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

__all__ = ["Checkpoints", "CheckpointError", "named_tree"]

# the format of gatezoo <= 0.1.0: the flat list of leaves under zero-padded indices
_NUMBERED = re.compile(r"^\d{5}$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into the state asked for (one line, naming it)."""


def _key_name(key: Any) -> str:
    for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey / FlattenedIndexKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_names(tree: Any) -> list[tuple[str, ...]]:
    """The name path of every leaf of ``tree``, in ``jax.tree_util.tree_leaves`` order."""
    names = []
    is_variable: Callable[[Any], bool] = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]:
        prefix = tuple(_key_name(k) for k in path)
        inner = jax.tree_util.tree_flatten_with_path(node)[0]
        if is_variable(node) and len(inner) == 1:
            names.append(prefix)  # the Variable's one array is named by where the Variable sits
            continue
        names.extend(prefix + tuple(_key_name(k) for k in sub) for sub, _ in inner)
    return [name or ("value",) for name in names]  # a bare array as the whole state


def named_tree(tree: Any, leaves: list[Any] | None = None) -> dict:
    """``tree`` as a nested dict keyed by the names along each leaf's path.

    Args:
      tree: any pytree; its paths give the names.
      leaves: values to put at those names instead of ``tree``'s own leaves (same order).

    Raises:
      ValueError: if two leaves get the same name (or one name is a prefix of another).

    Example:
      >>> import jax.numpy as jnp
      >>> named_tree({"cell": {"W": jnp.ones(2)}, "opt": (jnp.zeros(()),)})
      {'cell': {'W': Array([1., 1.], dtype=float32)}, 'opt': {'0': Array(0., dtype=float32)}}
    """
    names = _leaf_names(tree)
    values = jax.tree_util.tree_leaves(tree) if leaves is None else leaves
    out: dict = {}
    for name, value in zip(names, values, strict=True):
        node = out
        for part in name[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"checkpoint name {'/'.join(name)!r} clashes with another leaf")
        if name[-1] in node:
            raise ValueError(f"checkpoint name {'/'.join(name)!r} clashes with another leaf")
        node[name[-1]] = value
    return out


def _read_named(item: dict, names: list[tuple[str, ...]]) -> list[Any]:
    leaves = []
    for name in names:
        node = item
        for part in name:
            node = node[part]
        leaves.append(node)
    return leaves


class Checkpoints:
    """Saves numbered steps, keeps the last ``keep``, restores the newest one that reads back.

    Example:
      >>> import tempfile
      >>> import jax.numpy as jnp
      >>> from gatezoo.training import Checkpoints
      >>> state = {"cell": {"W": jnp.arange(3.0)}, "step": jnp.int32(5)}
      >>> ckpt = Checkpoints(tempfile.mkdtemp(), keep=3)
      >>> ckpt.save(5, state)
      True
      >>> step, back = ckpt.restore_latest(like=state)
      >>> step, back["cell"]["W"].tolist()
      (5, [0.0, 1.0, 2.0])
      >>> ckpt.close()
    """

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=int(keep)),
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )

    def latest_step(self) -> int | None:
        """The step of the newest finalised checkpoint (None if there is none)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of the finalised checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> bool:
        """Writes ``state`` as checkpoint ``step`` (no-op if that step is already saved)."""
        step = int(step)
        if step in self._manager.all_steps():
            return False
        saved = self._manager.save(step, args=ocp.args.StandardSave(named_tree(state)), force=True)
        self._manager.wait_until_finished()
        return bool(saved)

    def restore(self, step: int, like: Any) -> Any:
        """Checkpoint ``step`` in the structure (and placement) of the state ``like``.

        Raises:
          CheckpointError: the step does not read back into ``like`` (missing files, other
            shapes); the message names the step and the cause.
        """
        step = int(step)
        leaves, treedef = jax.tree_util.tree_flatten(like)
        targets = [ocp.utils.to_shape_dtype_struct(leaf) for leaf in leaves]
        numbered = False
        try:
            if not (self.directory / str(step) / "default").is_dir():
                raise FileNotFoundError(f"{step}/default is missing (files deleted)")
            metadata = self._manager.item_metadata(step)
            if metadata is None:
                raise FileNotFoundError("its metadata is missing (files deleted or never written)")
            stored = list(metadata.keys())
            numbered = bool(stored) and all(_NUMBERED.match(k) for k in stored)
            if numbered:
                target = {f"{i:05d}": t for i, t in enumerate(targets)}
                item = self._manager.restore(step, args=ocp.args.StandardRestore(target))
                restored = [item[f"{i:05d}"] for i in range(len(targets))]
            else:
                item = self._manager.restore(
                    step, args=ocp.args.StandardRestore(named_tree(like, targets))
                )
                restored = _read_named(item, _leaf_names(like))
        except Exception as err:  # orbax raises many types; each means "this step is unusable"
            cause = " ".join(str(err).split())[:300] or type(err).__name__
            kind = " (numbered leaves, the format of gatezoo 0.1)" if numbered else ""
            raise CheckpointError(
                f"checkpoint step {step}{kind} in {str(self.directory)!r} does not restore: "
                f"{cause}"
            ) from err
        return jax.tree_util.tree_unflatten(treedef, restored)

    def restore_latest(self, like: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest checkpoint that restores into ``like``.

        A newer step that does not restore is reported on stderr (which step, why); once an
        older step restores, the damaged ones are moved aside to ``damaged-<step>`` next to
        the checkpoints (kept for inspection), so the run saves those steps afresh. Returns None
        when there are no checkpoints.

        Raises:
          CheckpointError: checkpoints exist but none restores (the message lists each cause;
            nothing is moved).
        """
        failures: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                state = self.restore(step, like)
            except CheckpointError as err:
                print(f"gatezoo: skipping damaged checkpoint: {err}", file=sys.stderr)
                failures.append((step, str(err)))
                continue
            for bad, _ in failures:
                self._move_aside(bad)
            if failures:
                print(f"gatezoo: resuming from checkpoint step {step}; the damaged steps were "
                      f"moved to damaged-<step> in {str(self.directory)!r}", file=sys.stderr)
            return step, state
        if failures:
            raise CheckpointError(
                "no checkpoint restores (" + "; ".join(m for _, m in failures) + "); delete "
                "the checkpoints folder to start the run afresh, or resume elsewhere"
            )
        return None

    def _move_aside(self, step: int) -> None:
        # every process of a multi-host run gets here; one renames, all re-read the step list
        if jax.process_index() == 0:
            target = self.directory / f"damaged-{step}"
            n = 1
            while target.exists():
                target, n = self.directory / f"damaged-{step}-{n}", n + 1
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"gatezoo-damaged-{step}")
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()
