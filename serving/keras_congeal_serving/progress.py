"""A minimal stderr progress bar (no dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Redraws one line on a terminal; on a pipe, prints a line every `interval_s`.

    Args:
        total: int. Number of items.
        stream: text stream. Defaults to `sys.stderr`.
        enabled: bool. Print nothing when False.
        interval_s: float. Seconds between lines when the stream is not a terminal.
    """

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        enabled: bool = True,
        interval_s: float = 10.0,
    ):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interval_s = interval_s
        self.done = 0
        self.start = time.perf_counter()
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def _line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        fraction = self.done / self.total if self.total else 1.0
        bar = "#" * int(30 * fraction)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        return (
            f"[{bar:<30}] {self.done}/{self.total} {100 * fraction:3.0f}% "
            f"{rate:.0f} img/s ETA {eta_text}"
        )

    def update(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last >= 0.1 or self.done >= self.total:
                self.stream.write("\r" + self._line())
                self.stream.flush()
                self._last = now
        elif now - self._last >= self.interval_s and now - self.start >= self.interval_s:
            self.stream.write(self._line() + "\n")
            self.stream.flush()
            self._last = now

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()
