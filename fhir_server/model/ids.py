"""Server-assigned logical ids: UUIDs of version 7 (RFC 9562), which sort by the time they were made.

Why not random (version 4) UUIDs: every store keeps a B-tree on ``(type, id)`` (SQLite: the primary keys
of ``resources`` and ``versions``; MongoDB: the ``_id`` index). A random id lands on a random page of that
tree, so on a large store each create dirties pages all over it, and SQLite writes each such page again at
the next checkpoint. Ids that grow with time are appended at the right edge of the tree instead. Measured
on a store of 800,000 care items (bench, docs/benchmarks.md): an import of the next 40,000 went from
~1,010 to ~1,160 items/s with this change alone.

A version-7 UUID is still a UUID (clients that expect ``urn:uuid`` shapes are unaffected) and a valid FHIR
id. Its first 48 bits are the creation time in milliseconds, which the resource's first
``meta.lastUpdated`` tells anyway; the remaining 74 bits are random, so ids stay unguessable.
"""
from __future__ import annotations

import os
import time
import uuid


def new_id() -> str:
    """A new logical id: a version-7 UUID (48 bits of Unix time in ms, then 74 random bits)."""
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 of them used
    value = (millis & (1 << 48) - 1) << 80 | 0x7 << 76 | (random >> 68) << 64 | 0b10 << 62 | random & (1 << 62) - 1
    return str(uuid.UUID(int=value))


__all__ = ["new_id"]
