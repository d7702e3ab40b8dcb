"""Where metric lines go: ``metrics.jsonl``, TensorBoard events, and the progress line.

A metric line is a flat dict: ``step`` (int), ``seed`` (int), ``split`` (``"train"`` or
``"eval"``) and one float per metric, named ``loss``, ``lr``, ``grad_norm`` or
``"<instrument>/<quantity>"``. NaN values mean "not tracked at this step" and are left out of
every sink.

Every file sink writes in the calling thread and flushes each batch of lines, so a write that
fails (a full disk, a read-only folder, a quota) raises at once, as one :class:`OSError` naming
the file and the cause (:func:`write_failure`), and stops the run. Nothing waits on a
background writer: tensorboardX's ``SummaryWriter`` queues events for a thread that dies on
such an error, after which every ``add_scalar`` blocks forever, so the TensorBoard sink frames
its records itself (TFRecord: length, masked CRC-32C, record, masked CRC-32C).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TextIO

__all__ = [
    "JsonlSink", "TensorBoardSink", "Progress", "clean_line", "truncate_jsonl", "write_failure",
    "replace_file",
]


def write_failure(target: str | Path, err: BaseException, cause: str | None = None) -> OSError:
    """The one-line :class:`OSError` for a write to ``target`` that failed with ``err``.

    It keeps ``err``'s errno (so ``ENOSPC``, ``EROFS``, ``EDQUOT`` ... stay testable) and says
    what to do; ``cause`` replaces the errno's text (e.g. for a library's long message).
    """
    errno = getattr(err, "errno", None)
    if cause is None:
        cause = getattr(err, "strerror", None) or " ".join(str(err).split())[:300]
    text = (f"cannot write {str(target)!r}: {cause or type(err).__name__}; the run stopped "
            "(free space or make the folder writable, then resume)")
    return OSError(errno, text) if isinstance(errno, int) else OSError(text)


def replace_file(path: Path, write: Callable[[Path], None]) -> None:
    """Writes ``path`` anew through ``write(tmp)`` on a temporary file next to it, which
    replaces ``path`` only once whole: a full disk leaves the old file as it was (a resume
    reads it) instead of a cut one.

    Raises:
      OSError: :func:`write_failure` naming ``path``.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise write_failure(path, err) from err


def clean_line(line: dict[str, Any]) -> dict[str, Any]:
    """Python scalars only, NaN (not tracked) dropped."""
    out: dict[str, Any] = {}
    for k, v in line.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            continue
        out[k] = v
    return out


def truncate_jsonl(path: Path, before_step: int) -> None:
    """Keeps only the lines with ``step < before_step`` (a resumed run rewrites the rest).

    The kept lines replace the file only once written (:func:`replace_file`): a disk that is
    still full leaves the old file whole."""
    if not path.exists():
        return
    kept = []
    for text in path.read_text().splitlines():
        try:
            if json.loads(text).get("step", 0) < before_step:
                kept.append(text)
        except json.JSONDecodeError:
            continue  # a line cut by a kill or a full disk mid-write
    replace_file(path, lambda tmp: tmp.write_text("".join(t + "\n" for t in kept)))


class JsonlSink:
    """Appends one JSON object per line to ``path``, flushed after each :meth:`write`.

    Raises:
      OSError: (from the constructor, :meth:`write` or :meth:`close`) the file cannot be
        opened or written; one line naming it and the cause.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._failed = False
        try:
            self._file = self.path.open("a")
        except OSError as err:
            raise write_failure(self.path, err) from err

    def write(self, lines: list[dict[str, Any]]) -> None:
        try:
            for line in lines:
                # Infinity stays visible in the file (json writes it) so divergence is
                # inspectable.
                self._file.write(json.dumps(line) + "\n")
            self._file.flush()
        except OSError as err:
            self._failed = True
            raise write_failure(self.path, err) from err

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as err:
            # after a failed write the buffer still holds what did not fit: already reported
            if not self._failed:
                raise write_failure(self.path, err) from err


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # CRC-32C (Castagnoli), reflected
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # the optional C implementation (the `crc32c` package, as tensorboardX uses it)
    from crc32c import crc32c as _crc32c  # type: ignore[no-redef]  # noqa: F811
except ImportError:
    pass


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord: u64 length, its masked CRC, the data, its masked CRC."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


def _new_event_file(directory: Path) -> tuple[Path, BinaryIO]:
    """A new ``events.out.tfevents.<time>.<host>`` file (the name TensorBoard looks for); a
    file of the same second (a quick resume) is never overwritten."""
    stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    n = 0
    while True:
        path = directory / (stem if n == 0 else f"{stem}.{n}")
        try:
            return path, path.open("xb")
        except FileExistsError:
            n += 1


class TensorBoardSink:
    """Scalars ``<split>/<metric>/seed<s>`` in an event file under ``events/`` (needs the
    tensorboard extra).

    Non-finite values (infinite by design for some cells and quantities, or a diverged seed) are
    not written: TensorBoard draws no point for them and tensorboardX warns on every one (a
    default compare printed 22,313 such lines). ``metrics.jsonl`` keeps them; ``skipped``
    counts them, logged once when the sink closes.

    Events are written and flushed by :meth:`write` itself, in the caller's thread (see the
    module docstring for why not tensorboardX's writer thread); tensorboardX provides the
    ``Event`` protocol buffer and the tag cleaning of ``add_scalar``.

    Raises:
      OSError: (from the constructor, :meth:`write` or :meth:`close`) the event file cannot
        be created or written; one line naming it and the cause.
    """

    def __init__(self, directory: str | Path):
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        self._event, self._summary = Event, scalar
        self.directory = Path(directory)
        self.path = self.directory
        self.skipped = 0
        self._failed = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path, self._file = _new_event_file(self.directory)
            version = Event(wall_time=time.time(), file_version="brain.Event:2")
            self._file.write(tfrecord(version.SerializeToString()))
            self._file.flush()
        except OSError as err:
            raise write_failure(self.path, err) from err

    @staticmethod
    def available() -> bool:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
        return True

    def write(self, lines: list[dict[str, Any]]) -> None:
        records = []
        now = time.time()
        for line in lines:
            step, seed, split = line["step"], line["seed"], line["split"]
            for k, v in line.items():
                if k in ("step", "seed", "split") or not isinstance(v, (int, float)):
                    continue
                if not math.isfinite(v):
                    self.skipped += 1
                    continue
                event = self._event(wall_time=now, step=int(step),
                                    summary=self._summary(f"{split}/{k}/seed{seed}", v))
                records.append(tfrecord(event.SerializeToString()))
        try:
            self._file.write(b"".join(records))
            self._file.flush()
        except OSError as err:
            self._failed = True
            raise write_failure(self.path, err) from err

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as err:
            if not self._failed:  # a failed write was reported already
                raise write_failure(self.path, err) from err
        if self.skipped:
            logging.getLogger(__name__).info(
                "%d non-finite metric values left out of the TensorBoard events "
                "(metrics.jsonl holds them)", self.skipped)


class Progress:
    """One status line on stderr: step, mean training loss, last eval loss, steps per second.

    On a terminal the line is rewritten in place each round trip; otherwise (logs, pipes) a
    line is printed at most every ``interval`` seconds and at the end.
    """

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None,
                 interval: float = 5.0):
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self._last = 0.0
        self.eval_loss: float | None = None

    def update(self, step: int, loss: float, steps_per_sec: float, final: bool = False) -> None:
        if not self.enabled:
            return
        text = f"step {step}/{self.total}  loss {loss:.4g}"
        if self.eval_loss is not None:
            text += f"  eval {self.eval_loss:.4g}"
        text += f"  {steps_per_sec:,.0f} steps/s"
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + text.ljust(72) + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last >= self.interval:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = now
