"""Storage backends behind one interface: SQLite (embedded default) and MongoDB."""
from __future__ import annotations

from fhir_server.store.base import (AlreadyExists, HistoryPage, PageExpired, SearchPage, Store,
                                    StoredResource, VersionConflict)

__all__ = ["AlreadyExists", "HistoryPage", "PageExpired", "SearchPage", "Store", "StoredResource", "VersionConflict",
           "open_store"]


def open_store(url: str) -> Store:
    """Open the store named by a URL: ``sqlite:///path`` or ``mongodb://...``."""
    if url.startswith("sqlite://"):
        from fhir_server.store.sqlite import SQLiteStore
        return SQLiteStore.from_url(url)
    if url.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        from fhir_server.store.mongo import MongoStore
        return MongoStore.from_url(url)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or mongodb://HOST/DB")
