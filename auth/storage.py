"""Where the authorization server keeps its state: in the FHIR store's own database.

Every kind of record (users, clients, authorization codes, refresh tokens, launch contexts, OTP
challenges, lockout counters, revoked token ids, used client-assertion ids, browser sessions,
pending authorization requests, the signing key) is a small JSON document under a key, with an
optional expiry. SQLite keeps each kind in its own table ``auth_<kind>`` inside the store's file;
MongoDB in a collection ``auth_<kind>`` of the store's database. Because the state lives in the
shared database, every worker process sees the same users, codes and revocations at once, and the
CLI (``fhir-server users add`` ...) takes effect on a running server without a restart.

The few operations are atomic on both backends, which is what single-use codes, refresh token
rotation, ``jti`` replay refusal and attempt counters need:

* :meth:`AuthStore.add` inserts only if the key is free (or its previous record expired);
* :meth:`AuthStore.take` removes and returns a record in one step;
* :meth:`AuthStore.update` is a read-modify-write serialised against every other writer.
"""
from __future__ import annotations

import abc
import contextlib
import datetime as dt
import json
import random
import threading
import weakref
from typing import Any, Callable

KINDS = ("users", "clients", "codes", "refresh_tokens", "token_families", "launches", "otp", "lockouts",
         "revoked", "assertions", "keys", "sessions", "requests")

# old record (None if absent or expired) -> new record (None: delete)
Update = Callable[[dict | None], dict | None]


class AuthStore(abc.ABC):
    """Keyed JSON records with expiry; ``now`` (epoch seconds) always comes from the caller's clock."""

    @abc.abstractmethod
    def get(self, kind: str, key: str, now: float) -> dict | None:
        """The record, or None when absent or expired."""

    @abc.abstractmethod
    def put(self, kind: str, key: str, data: dict, expires: float | None = None) -> None:
        """Insert or replace."""

    @abc.abstractmethod
    def add(self, kind: str, key: str, data: dict, expires: float | None, now: float) -> bool:
        """Insert unless a live record holds the key; True if inserted."""

    @abc.abstractmethod
    def take(self, kind: str, key: str, now: float) -> dict | None:
        """Remove the record and return it (None when absent or expired): at most one caller gets it."""

    @abc.abstractmethod
    def update(self, kind: str, key: str, change: Update, now: float,
               expires: Callable[[dict], float | None] | None = None) -> dict | None:
        """Atomically replace the record by ``change(old)``; returns the new record.

        ``expires(new)`` gives the new expiry (default: keep the old one, or none for a new record).
        """

    @abc.abstractmethod
    def delete(self, kind: str, key: str) -> None:
        ...

    @abc.abstractmethod
    def purge(self, now: float) -> None:
        """Remove expired records of every kind."""

    def maybe_purge(self, now: float, chance: float = 0.01) -> None:
        if random.random() < chance:
            self.purge(now)


def _check(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown auth record kind {kind!r}")
    return "auth_" + kind


# -- SQLite ------------------------------------------------------------------------------------------------
class SQLiteAuthStore(AuthStore):
    """Tables ``auth_<kind>(key, data, expires)`` in the SQLite store's file, through its connections."""

    def __init__(self, store: Any):
        self.store = store
        conn = store._conn()
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not all(f"auth_{kind}" in present for kind in KINDS):
            with store._write() as conn:  # one transaction: one sync, however many tables
                for kind in KINDS:
                    conn.execute(f"CREATE TABLE IF NOT EXISTS auth_{kind} (key TEXT PRIMARY KEY, "
                                 "data TEXT NOT NULL, expires REAL)")
                    conn.execute(f"CREATE INDEX IF NOT EXISTS auth_{kind}_expires ON auth_{kind} (expires)")

    def _read(self, conn, table: str, key: str, now: float) -> tuple[dict, float | None] | None:
        row = conn.execute(f"SELECT data, expires FROM {table} WHERE key=?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= now):
            return None
        return json.loads(row[0]), row[1]

    def get(self, kind: str, key: str, now: float) -> dict | None:
        found = self._read(self.store._conn(), _check(kind), key, now)
        return found[0] if found else None

    def put(self, kind: str, key: str, data: dict, expires: float | None = None) -> None:
        table = _check(kind)
        with self.store._write() as conn:
            conn.execute(f"INSERT OR REPLACE INTO {table} (key, data, expires) VALUES (?,?,?)",
                         (key, json.dumps(data), expires))

    def add(self, kind: str, key: str, data: dict, expires: float | None, now: float) -> bool:
        table = _check(kind)
        with self.store._write() as conn:
            if self._read(conn, table, key, now) is not None:
                return False
            conn.execute(f"INSERT OR REPLACE INTO {table} (key, data, expires) VALUES (?,?,?)",
                         (key, json.dumps(data), expires))
            return True

    def take(self, kind: str, key: str, now: float) -> dict | None:
        table = _check(kind)
        with self.store._write() as conn:
            found = self._read(conn, table, key, now)
            conn.execute(f"DELETE FROM {table} WHERE key=?", (key,))
            return found[0] if found else None

    def update(self, kind, key, change, now, expires=None):
        table = _check(kind)
        with self.store._write() as conn:
            found = self._read(conn, table, key, now)
            new = change(json.loads(json.dumps(found[0])) if found else None)
            if new is None:
                conn.execute(f"DELETE FROM {table} WHERE key=?", (key,))
                return None
            until = expires(new) if expires else (found[1] if found else None)
            conn.execute(f"INSERT OR REPLACE INTO {table} (key, data, expires) VALUES (?,?,?)",
                         (key, json.dumps(new), until))
            return new

    def delete(self, kind: str, key: str) -> None:
        table = _check(kind)
        with self.store._write() as conn:
            conn.execute(f"DELETE FROM {table} WHERE key=?", (key,))

    def purge(self, now: float) -> None:
        with self.store._write() as conn:
            for kind in KINDS:
                conn.execute(f"DELETE FROM auth_{kind} WHERE expires IS NOT NULL AND expires <= ?", (now,))


# -- MongoDB -----------------------------------------------------------------------------------------------
class MongoAuthStore(AuthStore):
    """Collections ``auth_<kind>`` of the Mongo store's database: ``{_id: key, data, expires, rev}``.

    ``expires_at`` (a date) carries a TTL index so the server also removes dead records by itself;
    reads never trust it and compare ``expires`` with the caller's clock. Read-modify-write uses a
    revision number (compare-and-set, retried).
    """

    def __init__(self, store: Any):
        self.store = store
        self.db = store.db
        atomic = getattr(store, "_atomic", None)
        self._atomic = atomic if callable(atomic) else contextlib.nullcontext
        for kind in KINDS:
            self.db[_check(kind)].create_index("expires_at", expireAfterSeconds=0)

    def _coll(self, kind: str):
        return self.db[_check(kind)]

    @staticmethod
    def _doc(key: str, data: dict, expires: float | None, rev: int = 0) -> dict:
        doc = {"_id": key, "data": data, "expires": expires, "rev": rev}
        if expires is not None:
            # a day of margin: the TTL monitor must never remove what a (possibly fake) clock calls alive
            doc["expires_at"] = dt.datetime.fromtimestamp(expires, dt.timezone.utc).replace(tzinfo=None) \
                + dt.timedelta(days=1)
        return doc

    @staticmethod
    def _live(doc: dict | None, now: float) -> bool:
        return doc is not None and (doc.get("expires") is None or doc["expires"] > now)

    def get(self, kind: str, key: str, now: float) -> dict | None:
        doc = self._coll(kind).find_one({"_id": key})
        return doc["data"] if self._live(doc, now) else None

    def put(self, kind: str, key: str, data: dict, expires: float | None = None) -> None:
        with self._atomic():
            self._coll(kind).replace_one({"_id": key}, self._doc(key, data, expires), upsert=True)

    def add(self, kind: str, key: str, data: dict, expires: float | None, now: float) -> bool:
        from pymongo.errors import DuplicateKeyError
        coll = self._coll(kind)
        with self._atomic():
            try:
                coll.insert_one(self._doc(key, data, expires))
                return True
            except DuplicateKeyError:
                old = coll.find_one({"_id": key})
                if self._live(old, now):
                    return False
                result = coll.replace_one({"_id": key, "rev": old["rev"]} if old else {"_id": key},
                                          self._doc(key, data, expires, (old or {}).get("rev", 0) + 1))
                return result.matched_count == 1

    def take(self, kind: str, key: str, now: float) -> dict | None:
        with self._atomic():
            doc = self._coll(kind).find_one_and_delete({"_id": key})
        return doc["data"] if self._live(doc, now) else None

    def update(self, kind, key, change, now, expires=None):
        from pymongo.errors import DuplicateKeyError
        coll = self._coll(kind)
        for _ in range(100):
            with self._atomic():
                doc = coll.find_one({"_id": key})
                live = self._live(doc, now)
                new = change(json.loads(json.dumps(doc["data"])) if live else None)
                if doc is None:
                    if new is None:
                        return None
                    try:
                        coll.insert_one(self._doc(key, new, expires(new) if expires else None))
                        return new
                    except DuplicateKeyError:
                        continue
                if new is None:
                    if coll.delete_one({"_id": key, "rev": doc["rev"]}).deleted_count == 1:
                        return None
                    continue
                until = expires(new) if expires else (doc.get("expires") if live else None)
                if coll.replace_one({"_id": key, "rev": doc["rev"]},
                                    self._doc(key, new, until, doc["rev"] + 1)).matched_count == 1:
                    return new
        raise RuntimeError(f"auth record {kind}/{key} kept changing; gave up")

    def delete(self, kind: str, key: str) -> None:
        with self._atomic():
            self._coll(kind).delete_one({"_id": key})

    def purge(self, now: float) -> None:
        with self._atomic():
            for kind in KINDS:
                self._coll(kind).delete_many({"expires": {"$ne": None, "$lte": now}})


_stores: "weakref.WeakKeyDictionary[Any, AuthStore]" = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def open_auth_store(store: Any) -> AuthStore:
    """The authorization state living in the same database as ``store`` (one instance per store)."""
    with _stores_lock:
        found = _stores.get(store)
        if found is None:
            if hasattr(store, "db"):
                found = MongoAuthStore(store)
            elif hasattr(store, "_write") and hasattr(store, "_conn"):
                found = SQLiteAuthStore(store)
            else:
                raise TypeError(f"no authorization storage for {type(store).__name__}")
            _stores[store] = found
        return found
