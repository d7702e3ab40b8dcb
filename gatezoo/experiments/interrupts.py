"""Stopping cleanly on Ctrl-C and SIGTERM, in the main process and in compare's workers.

SIGTERM (a job scheduler, ``timeout``, ``kill``) is handled like Ctrl-C: it raises
:class:`Terminated`, a ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` that saves a
checkpoint or a partial result runs for both.

``gatezoo compare`` trains grid cells in worker processes. Left to themselves, workers outlive
an interrupted parent (they went on training and wrote results the parent had already marked
as interrupted) or die from a signal without releasing their named semaphores (tensorboardX's
event queue), which the resource tracker then reports as leaked. :func:`stop_workers` asks each
worker to stop as Ctrl-C would (its run saves a checkpoint and returns), waits for them to exit
through the pool's own shutdown, and only then lets the parent go.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Terminated", "raise_terminated", "swallows_exceptions", "worker_init",
           "run_in_worker", "stop_workers"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, ``timeout``, ``kill``), handled like Ctrl-C: finished parts are
    saved and a partial report is written before the process ends."""


def swallows_exceptions(frame: Any) -> bool:
    """Whether an exception raised in ``frame`` would be printed and dropped by Python: a
    garbage-collector callback (JAX registers one) or a ``__del__``."""
    if frame is None:
        return False
    code = frame.f_code
    return code.co_name == "__del__" or any(
        getattr(cb, "__code__", None) is code for cb in gc.callbacks)


def raise_terminated(signum: int, frame: Any) -> None:
    """A signal handler that raises :class:`Terminated` where Python will not drop it."""
    if swallows_exceptions(frame):
        # raised here, Terminated would be ignored and the run would go on: ask again shortly,
        # when the main thread is back in ordinary code
        threading.Timer(0.05, signal.raise_signal, (signum,)).start()
        return
    raise Terminated()


# a worker's own state: a run in progress, asked to stop, that run already interrupted
_WORKER = {"busy": False, "stopping": False, "interrupted": False}


def _worker_signal(signum: int, frame: Any) -> None:
    _WORKER["stopping"] = True
    # an idle worker waits in the pool's queue, where an exception would kill the process with
    # a traceback: it leaves through the pool's shutdown instead. A run is interrupted once: a
    # second signal (Ctrl-C reaches the whole process group, then the parent asks too) must not
    # cut the checkpoint that the first one is saving
    if _WORKER["busy"] and not _WORKER["interrupted"]:
        _WORKER["interrupted"] = not swallows_exceptions(frame)
        raise_terminated(signum, frame)


def worker_init(modules: Sequence[str] = ()) -> None:
    """A pool worker's initializer: SIGINT and SIGTERM stop the run in progress as Ctrl-C does
    (checkpoint saved, sinks closed) and refuse later ones; then ``modules`` are imported (the
    user's registrations, :func:`gatezoo.experiments.plugins.import_modules`)."""
    from gatezoo.experiments.plugins import import_modules

    signal.signal(signal.SIGINT, _worker_signal)
    signal.signal(signal.SIGTERM, _worker_signal)
    import_modules(modules)


def run_in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a pool worker, unless the worker was asked to stop: then
    :class:`Terminated` at once, so the queued grid cells it still receives end in no time."""
    _WORKER["interrupted"] = False
    _WORKER["busy"] = True  # before the check, so that a signal from here on stops the run
    try:
        if _WORKER["stopping"]:
            raise Terminated()
        return fn(*args)
    finally:
        _WORKER["busy"] = False


def stop_workers(pool: Any, grace_s: float = 60.0) -> None:
    """Stops a ``ProcessPoolExecutor`` whose parent was interrupted, releasing what it holds.

    Every worker gets SIGINT (its run saves and returns, see :func:`worker_init`), pending calls
    are cancelled and the pool's shutdown waits for the workers to exit and closes its queues.
    A worker still alive after ``grace_s`` seconds, or when the wait itself is interrupted, is
    killed.
    """
    # the pool keeps no public list of its processes; read it before shutdown clears it
    procs = [p for p in (getattr(pool, "_processes", None) or {}).values() if p.is_alive()]

    def kill_alive():
        for p in procs:
            if p.is_alive():
                p.kill()

    for p in procs:
        try:
            os.kill(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    timer = threading.Timer(grace_s, kill_alive)
    timer.daemon = True
    timer.start()
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        kill_alive()  # asked again while waiting: stop now
        raise
    finally:
        timer.cancel()
