"""Where metric lines go: ``metrics.jsonl``, TensorBoard events, and the progress line.

A metric line is a flat dict: ``step`` (int), ``seed`` (int), ``split`` (``"train"`` or
``"eval"``) and one float per metric, named ``loss``, ``lr``, ``grad_norm`` or
``"<instrument>/<quantity>"``. NaN values mean "not tracked at this step" and are left out of
every sink.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["JsonlSink", "TensorBoardSink", "Progress", "clean_line", "truncate_jsonl"]


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
    """Keeps only the lines with ``step < before_step`` (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    kept = []
    for text in path.read_text().splitlines():
        try:
            if json.loads(text).get("step", 0) < before_step:
                kept.append(text)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    path.write_text("".join(t + "\n" for t in kept))


class JsonlSink:
    """Appends one JSON object per line to ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = self.path.open("a")

    def write(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            # Infinity stays visible in the file (json writes it) so divergence is inspectable.
            self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars ``<split>/<metric>/seed<s>`` under ``events/`` (needs the tensorboard extra).

    Non-finite values (infinite by design for some cells and quantities, or a diverged seed) are
    not written: TensorBoard draws no point for them and tensorboardX warns on every one (a
    default compare printed 22,313 such lines). ``metrics.jsonl`` keeps them; ``skipped``
    counts them, logged once when the sink closes.
    """

    def __init__(self, directory: str | Path):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(directory))
        self.skipped = 0

    @staticmethod
    def available() -> bool:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
        return True

    def write(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            step, seed, split = line["step"], line["seed"], line["split"]
            for k, v in line.items():
                if k in ("step", "seed", "split") or not isinstance(v, (int, float)):
                    continue
                if not math.isfinite(v):
                    self.skipped += 1
                    continue
                self._writer.add_scalar(f"{split}/{k}/seed{seed}", v, step)

    def close(self) -> None:
        self._writer.close()
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
