"""A dependency-free progress bar on stderr (redrawn in place on a terminal, a line per run otherwise)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["Progress"]


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    """Counts steps out of ``total``; ``label`` names the current run.

    Parameters
    ----------
    total : int
        Steps in the whole experiment.
    stream : text stream, default sys.stderr
    enabled : bool, default True
    """

    def __init__(self, total: int, stream: Optional[TextIO] = None, enabled: bool = True, width: int = 28):
        self.total = max(int(total), 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.label = ""
        self.t0 = time.perf_counter()
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def _line(self) -> str:
        frac = min(self.done / self.total, 1.0)
        fill = int(round(frac * self.width))
        el = time.perf_counter() - self.t0
        eta = el / frac - el if frac > 0 else float("nan")
        eta_s = _fmt_seconds(eta) if frac > 0 else "?"
        return (
            f"[{'#' * fill}{'.' * (self.width - fill)}] {100 * frac:5.1f}%  {self.label}  "
            f"elapsed {_fmt_seconds(el)}  eta {eta_s}"
        )

    def set_label(self, label: str) -> None:
        self.label = label
        if self.enabled and self._tty:
            self._draw(force=True)

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.enabled and self._tty:
            self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last_draw > 0.1 or self.done >= self.total:
            self._last_draw = now
            self.stream.write("\r" + self._line().ljust(100))
            self.stream.flush()

    def run_finished(self, message: str) -> None:
        """Report a finished run (a permanent line) and keep the bar below it."""
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(f"{self._line()}  | {message}\n" if not self._tty else f"  {message}\n")
        self.stream.flush()
        if self._tty:
            self._draw(force=True)

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
