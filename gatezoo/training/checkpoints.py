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
step that reads back. Saves are synchronous, so a returned ``save`` is durable; a save that
cannot write (a full disk, a read-only folder, a quota) raises one :class:`OSError` naming the
step's folder and the cause, and leaves only its unfinalised temporary folder behind.

A checkpoint that reads back but holds another state (a model of another width, other
instruments, other dtypes) is not damaged: :meth:`Checkpoints.restore` compares orbax's
metadata of the step with the state asked for, leaf by leaf, and raises
:class:`CheckpointMismatch` naming the first parameter that differs; nothing is moved.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from gatezoo.training.sinks import write_failure

__all__ = ["Checkpoints", "CheckpointError", "CheckpointMismatch", "named_tree"]

# the format of gatezoo <= 0.1.0: the flat list of leaves under zero-padded indices
_NUMBERED = re.compile(r"^\d{5}$")


# tensorstore (under orbax) reports an OS error as text: "... [os_error_code='28']"
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into the state asked for (one line, naming it)."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint that reads back but holds another state (other leaves, shapes or dtypes):
    the message names the first parameter that differs, as stored and as asked for."""


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


def _os_errno(err: BaseException) -> int | None:
    """The errno behind an exception of orbax: an ``OSError`` in its chain, or the
    ``os_error_code`` that tensorstore writes into its message."""
    seen: set[int] = set()
    at: BaseException | None = err
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        if isinstance(at, OSError) and isinstance(at.errno, int):
            return at.errno
        found = _OS_ERROR_CODE.search(str(at))
        if found:
            return int(found.group(1))
        at = at.__cause__ or at.__context__
    return None


def _describe(shape: Any, dtype: Any) -> str:
    """``float32[8,24]``: a leaf as the mismatch message names it."""
    try:
        name = np.dtype(dtype).name
    except TypeError:  # an extended dtype (a typed PRNG key)
        name = str(dtype)
    return f"{name}[{','.join(str(int(d)) for d in shape)}]"


def _stored_leaves(metadata: Any) -> dict[tuple[str, ...], Any]:
    """Orbax's metadata of a step: each stored leaf's name path -> its metadata."""
    flat = jax.tree_util.tree_flatten_with_path(metadata)[0]
    return {tuple(_key_name(k) for k in path): leaf for path, leaf in flat}


def _first_mismatch(
    stored: dict[tuple[str, ...], Any], names: list[tuple[str, ...]], targets: list[Any],
    numbered: bool,
) -> str | None:
    """How the stored leaves differ from the state asked for (``names``, ``targets`` in leaf
    order), first difference only; None when every leaf has its stored shape and dtype."""
    keys = [(f"{i:05d}",) for i in range(len(targets))] if numbered else names
    shown = [f"leaf {k[0]} ({'/'.join(n)})" if numbered else "/".join(n)
             for k, n in zip(keys, names, strict=True)]
    for key, label, target in zip(keys, shown, targets, strict=True):
        if key not in stored:
            return f"{label} ({_describe(target.shape, target.dtype)}) is not in the checkpoint"
    extra = sorted(set(stored) - set(keys))
    if extra:
        return f"the checkpoint holds {'/'.join(extra[0])}, which the state to resume has not"
    for key, label, target in zip(keys, shown, targets, strict=True):
        meta = stored[key]
        shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
        if shape is None or dtype is None:
            continue  # not an array (orbax's scalar or string metadata): nothing to compare
        was, now = _describe(shape, dtype), _describe(target.shape, target.dtype)
        if was != now:
            return f"{label} is {was} in the checkpoint, {now} in this run"
    return None


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
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
            )
        except OSError as err:  # the folder cannot be created
            raise write_failure(self.directory, err) from err

    def latest_step(self) -> int | None:
        """The step of the newest finalised checkpoint (None if there is none)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of the finalised checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> bool:
        """Writes ``state`` as checkpoint ``step`` (no-op if that step is already saved).

        Raises:
          OSError: the step cannot be written (disk full, read-only, quota): one line naming
            its folder and the cause. The older steps are untouched; the unfinalised temporary
            folder of this one is deleted by the next :class:`Checkpoints` of the folder.
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        try:
            saved = self._manager.save(step, args=ocp.args.StandardSave(named_tree(state)),
                                       force=True)
            self._manager.wait_until_finished()
        except Exception as err:  # orbax and tensorstore raise many types for one OS error
            errno = _os_errno(err)
            if errno is None:
                raise
            # tensorstore's message is long (it holds the whole spec): the errno's text says it
            raise write_failure(self.directory / str(step), OSError(errno, os.strerror(errno)),
                                f"checkpoint step {step}: {os.strerror(errno)}") from err
        return bool(saved)

    def restore(self, step: int, like: Any) -> Any:
        """Checkpoint ``step`` in the structure (and placement) of the state ``like``.

        Raises:
          CheckpointMismatch: the step holds other leaves, shapes or dtypes than ``like``
            (another model width, other instruments); the message names the first parameter
            that differs, as stored and as asked for.
          CheckpointError: the step does not read back (missing or cut files); the message
            names the step and the cause.
        """
        step = int(step)
        leaves, treedef = jax.tree_util.tree_flatten(like)
        targets = [ocp.utils.to_shape_dtype_struct(leaf) for leaf in leaves]
        names = _leaf_names(like)
        stored, numbered = self._stored(step)
        kind = " (numbered leaves, the format of gatezoo 0.1)" if numbered else ""
        where = f"checkpoint step {step}{kind} in {str(self.directory)!r}"
        mismatch = _first_mismatch(stored, names, targets, numbered)
        if mismatch is not None:
            raise CheckpointMismatch(
                f"{where} holds another state: {mismatch}; resume with the model and config "
                "that wrote it, or train in a new run folder"
            )
        try:
            if numbered:
                target = {f"{i:05d}": t for i, t in enumerate(targets)}
                item = self._manager.restore(step, args=ocp.args.StandardRestore(target))
                restored = [item[f"{i:05d}"] for i in range(len(targets))]
            else:
                item = self._manager.restore(
                    step, args=ocp.args.StandardRestore(named_tree(like, targets))
                )
                restored = _read_named(item, names)
        except Exception as err:  # orbax raises many types; each means "this step is unusable"
            cause = " ".join(str(err).split())[:300] or type(err).__name__
            raise CheckpointError(f"{where} does not restore: {cause}") from err
        return jax.tree_util.tree_unflatten(treedef, restored)

    def _stored(self, step: int) -> tuple[dict[tuple[str, ...], Any], bool]:
        """The stored leaves of ``step`` (name path -> orbax metadata) and whether they are
        numbered (gatezoo 0.1); :class:`CheckpointError` if the metadata does not read."""
        try:
            if not (self.directory / str(step) / "default").is_dir():
                raise FileNotFoundError(f"{step}/default is missing (files deleted)")
            metadata = self._manager.item_metadata(step)
            if metadata is None:
                raise FileNotFoundError("its metadata is missing (files deleted or never written)")
            stored = _stored_leaves(metadata)
        except Exception as err:  # orbax raises many types; each means "this step is unusable"
            cause = " ".join(str(err).split())[:300] or type(err).__name__
            raise CheckpointError(
                f"checkpoint step {step} in {str(self.directory)!r} does not restore: {cause}"
            ) from err
        numbered = bool(stored) and all(_NUMBERED.match(name[0]) for name in stored)
        return stored, numbered

    def restore_latest(self, like: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest checkpoint that restores into ``like``.

        A newer step that does not restore is reported on stderr (which step, why); once an
        older step restores, the damaged ones are moved aside to ``damaged-<step>`` next to
        the checkpoints (kept for inspection), so the run saves those steps afresh. Returns None
        when there are no checkpoints.

        Raises:
          CheckpointMismatch: a step that reads back holds another state than ``like`` (another
            model width...): a good checkpoint of another run, so nothing is moved or skipped.
          CheckpointError: checkpoints exist but none restores (the message lists each cause;
            nothing is moved).
        """
        failures: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                state = self.restore(step, like)
            except CheckpointMismatch:
                raise
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
