"""A dependency-free progress bar with a rate (images/s), for long extractions and probes.

On a terminal it redraws one line; elsewhere (CI logs, ``nohup``) it prints a line every
``log_every`` seconds so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

__all__ = ["Progress", "ProgressBar", "NullProgress", "ProgressFactory"]


class Progress(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


class ProgressFactory(Protocol):
    def __call__(self, total: int, desc: str, unit: str = "img") -> Progress: ...


class NullProgress:
    """Does nothing; the library's default."""

    def __init__(self, total: int = 0, desc: str = "", unit: str = "img"):
        pass

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """``desc  42%|#####     | 2100/5000 [00:03<00:04, 612.3 img/s]`` on ``stream``."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "img",
        stream: TextIO | None = None,
        width: int = 24,
        log_every: float = 10.0,
    ):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width, self.interval = width, (0.1 if self.tty else log_every)
        self.n, self.t0 = 0, time.perf_counter()
        self._last, self._drawn = 0.0, -1
        self._draw(force=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        frac = self.n / self.total if self.total else 1.0
        filled = int(frac * self.width)
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        return (
            f"{self.desc} {frac:4.0%}|{'#' * filled}{' ' * (self.width - filled)}| {self.n}/{self.total} "
            f"[{_fmt_time(elapsed)}<{_fmt_time(eta)}, {rate:,.1f} {self.unit}/s]"
        )

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last, self._drawn = now, self.n
        self.stream.write(("\r" + self.line()) if self.tty else (self.line() + "\n"))
        self.stream.flush()

    def update(self, n: int) -> None:
        self.n += n
        self._draw(force=self.n >= self.total)

    def close(self) -> None:
        if self._drawn != self.n:
            self._draw(force=True)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
