"""The store interface every backend implements, and the records it exchanges.

The service layer decides *what* to write (new version number, meta, body bytes,
index entries); a store only makes it durable and findable. Each write goes through
a :class:`Transaction`, so a resource version, its history row and its index
entries land together or not at all, and a transaction Bundle is one unit.

Concurrency is optimistic: :meth:`Transaction.put` takes the version the caller
based its change on and raises :class:`VersionConflict` when another writer got
there first; nothing is overwritten blindly.
"""
from __future__ import annotations

import abc
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from fhir_server.search.entries import IndexEntries

T = TypeVar("T")


class VersionConflict(Exception):
    """The resource changed since the version the writer read (compare-and-set failed)."""


class PageExpired(Exception):
    """A page link refers to a search snapshot that no longer exists."""


class AlreadyExists(Exception):
    """A create found the id (or the conditional-create key) already taken."""


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource as stored; ``body`` is the exact JSON returned on read."""

    type: str
    id: str
    version: int
    last_updated: str  # FHIR instant, UTC, microseconds
    deleted: bool
    body: bytes | None  # None for a deletion marker
    method: str = "PUT"  # POST | PUT | PATCH | DELETE: the interaction that made this version


@dataclass(frozen=True)
class HistoryPage:
    entries: list[StoredResource]
    next_cursor: str | None  # opaque; None on the last page
    total: int | None = None


class Transaction(abc.ABC):
    """One atomic unit of writes (and the reads that decide them)."""

    @abc.abstractmethod
    def current(self, rtype: str, rid: str) -> StoredResource | None:
        """The current version (possibly a deletion marker), read inside the transaction."""

    @abc.abstractmethod
    def put(self, resource: StoredResource, index: IndexEntries | None, *, expected_version: int | None) -> None:
        """Write ``resource`` as the new current version.

        ``expected_version`` is the version this change was based on (``None``: the id
        must not exist yet). ``index`` is None for a deletion marker.
        """

    def current_many(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], StoredResource | None]:
        """:meth:`current` of each (type, id), as a dict. A backend may read them at once, and keep them for the
        :meth:`current` calls and write checks of the rest of the transaction (a bulk load's chunk)."""
        return {key: self.current(*key) for key in keys}

    def put_many(self, items: Iterable[tuple[StoredResource, IndexEntries | None, int | None]]) -> None:
        """:meth:`put` of each ``(resource, index, expected_version)``, in order, possibly in bulk.

        Same checks and errors as that loop: when an item is refused (:class:`AlreadyExists`,
        :class:`VersionConflict`) the error propagates and the transaction must not be committed
        (the items before it may have been written in it; rolling it back removes them all)."""
        for resource, index, expected_version in items:
            self.put(resource, index, expected_version=expected_version)

    @abc.abstractmethod
    def search(self, query: Any) -> list[tuple[str, str]]:
        """(type, id) of the current resources matching a compiled query, inside the transaction."""

    @abc.abstractmethod
    def claim(self, key: str) -> None:
        """Hold a conditional-create key until this transaction ends; :class:`AlreadyExists` when taken.

        Two concurrent conditional creates with the same criteria must not both create.
        A backend whose write transactions are serialised (SQLite) needs no key.
        """


class Store(abc.ABC):
    """A FHIR resource store. Implementations must pass ``tests/store/test_contract.py``."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]:
        """A write transaction: committed on normal exit, rolled back on exception."""

    def atomically(self, action: Callable[[Transaction], T]) -> T:
        """Run ``action`` in a write transaction of its own and commit it; return what it returned.

        Same contract as ``with self.transaction() as tx: return action(tx)``: when ``action``
        raises, none of its writes land and the exception propagates; when this returns, the
        writes are committed and durable. A backend may commit the actions of concurrent
        callers together (group commit: one durable flush for several), each still all or
        nothing on its own and one failing never failing the others; ``action`` may then run on
        another thread (in a copy of the caller's ``contextvars`` context), so it must not rely
        on thread identity.
        """
        with self.transaction() as tx:
            return action(tx)

    @abc.abstractmethod
    def read(self, rtype: str, rid: str) -> StoredResource | None:
        """The current version, or the deletion marker, or None if the id never existed."""

    @abc.abstractmethod
    def vread(self, rtype: str, rid: str, version: int) -> StoredResource | None:
        ...

    @abc.abstractmethod
    def history(self, rtype: str | None = None, rid: str | None = None, *, since: str | None = None,
                before: str | None = None, current_from: str | None = None, count: int = 50,
                cursor: str | None = None) -> HistoryPage:
        """Versions newest first; paging by opaque cursor. ``since``/``before`` (FHIR instants) bound the
        versions' lastUpdated (``before`` exclusive); ``current_from`` leaves out the versions superseded at
        or before it (with ``before``: the versions current at some point of a period, R4 ``_at``)."""

    @abc.abstractmethod
    def search(self, query: Any, *, count: int, cursor: str | None = None) -> "SearchPage":
        """Current resources matching a parsed query (see ``fhir_server.search.query``)."""

    @abc.abstractmethod
    def count(self, query: Any) -> int:
        ...

    @abc.abstractmethod
    def read_many(self, keys: list[tuple[str, str]]) -> list[StoredResource]:
        """Current, non-deleted versions of the given (type, id) pairs, in no particular order."""

    @contextmanager
    def bulk_writes(self) -> Iterator[None]:
        """A hint for the duration of many writes from this thread (``fhir-server load``, a large
        ``$import``): a backend may size its caches for them while the block runs. Changes nothing of what
        is stored or how durably."""
        yield

    def iterate(self, rtype: str) -> Iterator[StoredResource]:
        """Every current, non-deleted resource of a type (reindex, export)."""
        raise NotImplementedError

    def expunge(self, rtype: str, rid: str) -> int:
        """Physically remove a resource: every version, its current row and its index entries (the care
        history's purge of expired items; not a FHIR delete, which keeps history). How many versions went."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class SearchPage:
    resources: list[StoredResource]
    next_cursor: str | None
