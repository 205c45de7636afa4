"""A background task run at a fixed interval in each server process (scheduled jobs of ``serve``).

Every worker process runs its own; the jobs run this way are written to be safe when several
processes run them at once (each change is a compare-and-set write: whoever writes first acts).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)


class PeriodicTask:
    """A daemon thread calling ``action()`` every ``interval`` seconds (the first time after ``first_delay``);
    a failing run is logged and retried at the next interval."""

    def __init__(self, name: str, action: Callable[[], Any], interval: float, first_delay: float = 60.0):
        self.name = name
        self.action = action
        self.interval = interval
        self.first_delay = first_delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        delay = self.first_delay
        while not self._stop.wait(delay):
            delay = self.interval
            try:
                self.action()
            except Exception:
                log.exception("%s failed; next try in %.0f s", self.name, self.interval)
