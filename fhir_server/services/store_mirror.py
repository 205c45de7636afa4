"""In-process state mirrored from the stored resources of one type, which other server processes may change.

Custom SearchParameters and Subscriptions are held in memory by each ``serve`` process; a process notices
what another one wrote by comparing a cheap marker of the type's history (its version count and newest
version) with the one of its last load, at most every ``interval`` seconds.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class StoreMirror:
    """Base of a service mirroring one resource type: subclasses set :attr:`mirrored_type`, implement
    :meth:`load` (which records ``self._marker = self._store_marker()`` taken before reading) and
    :meth:`mirror_store`, and call :meth:`init_mirror` in their constructor."""

    mirrored_type: str

    def init_mirror(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.RLock()
        self._marker: Any = None  # what the store looked like at the last load; None: reload at the next refresh
        self._checked_at = float("-inf")

    def mirror_store(self) -> Any:
        raise NotImplementedError

    def load(self) -> int:
        raise NotImplementedError

    def _store_marker(self) -> tuple:
        page = self.mirror_store().history(self.mirrored_type, count=1)
        newest = page.entries[0] if page.entries else None
        return page.total, (newest.id, newest.version, newest.last_updated) if newest else None

    def refresh(self, force: bool = False) -> bool:
        """Pick up what other processes wrote; True when reloaded. Without ``force``, looks at the store at most
        every :attr:`interval` seconds, and not while another thread is looking."""
        now = self.clock()
        if not force and now - self._checked_at < self.interval:
            return False
        if not self._lock.acquire(blocking=force):
            return False
        try:
            self._checked_at = now
            if self._store_marker() == self._marker:
                return False
            self.load()
            return True
        finally:
            self._lock.release()
