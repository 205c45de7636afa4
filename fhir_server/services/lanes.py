"""A lane for large writes: at most a few of them run at once in a worker process.

Why: a server process has a handful of request threads. A large batch or transaction Bundle (the
insurer's feed sends hundreds of entries in each) keeps its thread and most of the process's
interpreter lock for as long as it takes, which is hundreds of milliseconds. When every thread of a
process held such a Bundle, a read waited for one of them to finish: in the care history benchmark
(bench/insurer.py, one process of two threads, two feeding clients) reads fell from ~220/s to 26/s
with a p99 of half a second. The feed must never block the rest of the server (issue #8).

The lane lets ``width`` large requests run at once per process; the others wait for their turn
(asleep: they hold a thread but not the interpreter), so the process keeps spare threads and CPU
for everything else. With more threads than lane width per process (``serve`` runs 4 threads),
a read always finds a thread unless that many large requests queue on one process at once.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

LARGE_FROM = 20  # entries: a Bundle from this size waits for the lane


class Lane:
    """A counted gate for large requests in one process (``width`` at once, the others wait)."""

    def __init__(self, width: int = 1, large_from: int = LARGE_FROM):
        if width < 1:
            raise ValueError("a lane needs a width of at least 1")
        self.width = width
        self.large_from = large_from
        self._slots = threading.BoundedSemaphore(width)
        self._lock = threading.Lock()
        self.running = 0  # large requests in the lane now
        self.waiting = 0  # large requests waiting for it

    def is_large(self, size: int) -> bool:
        return size >= self.large_from

    @contextmanager
    def entered(self, size: int) -> Iterator[None]:
        """Run the block in the lane when ``size`` (entries) makes it a large request, else at once."""
        if not self.is_large(size):
            yield
            return
        with self._lock:
            self.waiting += 1
        self._slots.acquire()
        with self._lock:
            self.waiting -= 1
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
            self._slots.release()


__all__ = ["LARGE_FROM", "Lane"]
