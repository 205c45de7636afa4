"""The store backends every store-dependent test runs on (imported by the conftests)."""
from __future__ import annotations

import os
import uuid

BACKENDS = ["sqlite", "mongo"]


def make_store(backend: str, tmp_path):
    """A fresh, empty store: SQLite in ``tmp_path``; MongoDB on ``MONGODB_URI`` if set, else mongomock."""
    if backend == "sqlite":
        from fhir_server.store.sqlite import SQLiteStore
        # no fsync per commit in tests: same semantics, several times faster set-up
        return SQLiteStore(tmp_path / "fhir.sqlite3", synchronous="NORMAL")
    from fhir_server.store.mongo import MongoStore
    uri = os.environ.get("MONGODB_URI")
    if uri:
        return MongoStore.from_url(uri.rstrip("/") + f"/test_{uuid.uuid4().hex[:12]}", drop_on_close=True)
    return MongoStore.from_url(f"mongomock://localhost/fhir_{uuid.uuid4().hex[:8]}")
