"""The MongoDB store (production: a replica set, see docker-compose; tests: mongomock).

Collections (docs/adr/0002-search-index.md, "MongoDB"):

* ``resources``: one document per logical resource, ``_id = "Type/id"``, holding the
  current version (``version``, ``lu`` in µs, ``deleted``, ``body`` bytes, ``method``,
  ``last_updated``), a ``seq`` ObjectId assigned at creation and kept on updates (the
  stable order of unsorted searches), and the version's index entries embedded as arrays
  (``tok``, ``str``, ``dt``, ``num``, ``qty``, ``ref``, ``uri``, ``cmp``; see
  :mod:`fhir_server.store.mongo_search`) with compound multikey indexes on them;
* ``versions``: every version, unique on (type, id, version);
* ``snapshots``: the ordered matches of a sorted search being paged, in chunks
  (no document nears the 16 MB BSON limit), removed by a TTL index;
* ``locks``: conditional-create keys (:meth:`MongoTransaction.claim`), TTL about a minute.

Indexes are created at start-up; ``create_index`` is idempotent, so every process may do it.

Atomicity. On a replica set or sharded cluster a :meth:`MongoStore.transaction` is a
multi-document transaction (snapshot read concern, majority write concern): a
resource, its version and a whole transaction Bundle commit together or not at all.
A standalone server and mongomock have no transactions; there the store falls back to
an *undo log*: every write of the transaction is recorded and, when the block raises,
undone in reverse order. That fallback is atomic against failures of the caller (a
validation error in entry 57 of a Bundle), **not** against a crash of the process in
the middle, and other readers may see the intermediate state. Run production on a
replica set (the docker-compose file starts a one-node one).

Compare-and-set stays exact either way: an update is ``find_one_and_update`` on
``{_id, version: expected}`` (one atomic document write), a create is an insert that
the unique ``_id`` rejects, and the versions collection's unique key is a second guard.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from fhir_server.search.entries import IndexEntries
from fhir_server.store.base import (AlreadyExists, HistoryPage, PageExpired, SearchPage, Store, StoredResource,
                                    Transaction, VersionConflict)
from fhir_server.store.mongo_search import MongoCompiler
from fhir_server.store.sqlite import composite_row
from fhir_server.store.sqlite_search import decode_cursor, encode_cursor

log = logging.getLogger(__name__)

SNAPSHOT_TTL = 3600  # seconds a sorted search's page links stay valid
SNAPSHOT_CHUNK = 20_000  # ids per snapshot document: "Type/id" <= ~110 bytes, so < 3 MB each
LOCK_TTL = 60  # seconds a conditional-create key is held at most (a crashed holder)
INDEX_FIELDS = ("tok", "str", "dt", "num", "qty", "ref", "uri", "cmp")
RESOURCE_PROJECTION = {"type": 1, "id": 1, "version": 1, "last_updated": 1, "deleted": 1, "method": 1, "body": 1}
WRITE_CONFLICT = 112
DUPLICATE_KEY = (11000, 11001)

RESOURCE_INDEXES: list[tuple[list[tuple[str, int]], dict]] = [
    ([("type", ASCENDING), ("id", ASCENDING)], {"unique": True}),
    ([("type", ASCENDING), ("seq", ASCENDING)], {}),
    ([("seq", ASCENDING)], {}),
    ([("type", ASCENDING), ("lu", ASCENDING)], {}),
    ([("tok.p", ASCENDING), ("tok.c", ASCENDING), ("tok.s", ASCENDING)], {}),
    ([("tok.p", ASCENDING), ("tok.t", ASCENDING)], {}),
    ([("str.p", ASCENDING), ("str.n", ASCENDING)], {}),
    ([("str.p", ASCENDING), ("str.e", ASCENDING)], {}),
    ([("dt.p", ASCENDING), ("dt.lo", ASCENDING), ("dt.hi", ASCENDING)], {}),
    ([("dt.p", ASCENDING), ("dt.hi", ASCENDING)], {}),
    ([("num.p", ASCENDING), ("num.lo", ASCENDING), ("num.hi", ASCENDING)], {}),
    ([("qty.p", ASCENDING), ("qty.lo", ASCENDING), ("qty.hi", ASCENDING)], {}),
    ([("qty.p", ASCENDING), ("qty.cc", ASCENDING), ("qty.clo", ASCENDING)], {}),
    ([("ref.p", ASCENDING), ("ref.ti", ASCENDING), ("ref.tt", ASCENDING)], {}),
    ([("ref.tt", ASCENDING), ("ref.ti", ASCENDING)], {}),
    ([("ref.p", ASCENDING), ("ref.u", ASCENDING)], {}),
    ([("uri.p", ASCENDING), ("uri.u", ASCENDING)], {}),
    ([("cmp.p", ASCENDING), ("cmp.c", ASCENDING), ("cmp.s", ASCENDING)], {}),
]
VERSION_INDEXES: list[tuple[list[tuple[str, int]], dict]] = [
    ([("type", ASCENDING), ("id", ASCENDING), ("version", ASCENDING)], {"unique": True}),
    ([("type", ASCENDING), ("lu", DESCENDING), ("_id", DESCENDING)], {}),
    ([("lu", DESCENDING), ("_id", DESCENDING)], {}),
]


def _lu(last_updated: str) -> int:
    from fhir_server.model.dates import parse_range
    return parse_range(last_updated)[0]


def _now() -> dt.datetime:
    """Naive UTC, as BSON dates come back (and as mongomock's TTL compares them)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _doc_to_resource(doc: dict) -> StoredResource:
    body = doc.get("body")
    return StoredResource(doc["type"], doc["id"], doc["version"], doc["last_updated"], bool(doc["deleted"]),
                          bytes(body) if body is not None else None, doc.get("method", "PUT"))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def index_arrays(index: IndexEntries | None) -> dict[str, list[dict]]:
    """The embedded index entry arrays of one resource version (all empty for a deletion marker)."""
    if index is None:
        return {field: [] for field in INDEX_FIELDS}

    def unique(rows: list[dict]) -> list[dict]:
        seen, out = set(), []
        for row in rows:
            key = tuple(row.items())
            if key not in seen:
                seen.add(key)
                out.append(row)
        return out

    cmp = []
    for entry in index.composites:
        param, system, code, v_system, v_code, v_low, v_high, v_text, v_ccode, v_clow, v_chigh = composite_row(entry)
        row = {"p": param, "s": system, "c": code, "vs": v_system, "vc": v_code, "vlo": v_low, "vhi": v_high,
               "vt": v_text}
        if type(entry.components[1]).__name__ == "QuantityEntry":
            row.update(vlo=_float(v_low), vhi=_float(v_high), vcc=v_ccode, vclo=_float(v_clow), vchi=_float(v_chigh))
        cmp.append(row)
    return {
        "tok": unique([{"p": e.param, "s": e.system, "c": e.code, "t": e.text} for e in index.tokens]),
        "str": unique([{"p": e.param, "n": e.normalized, "e": e.exact} for e in index.strings]),
        "dt": unique([{"p": e.param, "lo": int(e.low), "hi": int(e.high)} for e in index.dates]),
        "num": unique([{"p": e.param, "lo": float(e.low), "hi": float(e.high)} for e in index.numbers]),
        "qty": unique([{"p": e.param, "lo": float(e.low), "hi": float(e.high), "s": e.system, "c": e.code,
                        "cc": e.canonical_code, "clo": _float(e.canonical_low), "chi": _float(e.canonical_high)}
                       for e in index.quantities]),
        "ref": unique([{"p": e.param, "tt": e.target_type, "ti": e.target_id, "u": e.url, "v": e.version}
                       for e in index.references]),
        "uri": unique([{"p": e.param, "u": e.uri} for e in index.uris]),
        "cmp": unique(cmp),
    }


class MongoTransaction(Transaction):
    """Writes of one :meth:`MongoStore.transaction`: in a server session, or recorded in an undo log."""

    def __init__(self, store: "MongoStore", session: Any | None):
        self.store = store
        self.session = session
        self.undo: list[tuple] = []
        self.claims: list[tuple[str, str]] = []  # (key, owner token)
        self.last_query: Any = None

    @property
    def _kw(self) -> dict:
        return {"session": self.session} if self.session is not None else {}

    def current(self, rtype: str, rid: str) -> StoredResource | None:
        with self.store._atomic():  # mongomock: never see a half-applied update (MongoDB: a no-op)
            doc = self.store.resources.find_one({"_id": f"{rtype}/{rid}"}, RESOURCE_PROJECTION, **self._kw)
        return _doc_to_resource(doc) if doc else None

    def current_many(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], StoredResource | None]:
        keys = list(keys)
        found: dict[tuple[str, str], StoredResource | None] = dict.fromkeys(keys)
        ids = list(dict.fromkeys(f"{t}/{i}" for t, i in keys))
        for start in range(0, len(ids), 1000):
            with self.store._atomic():
                docs = list(self.store.resources.find({"_id": {"$in": ids[start:start + 1000]}}, RESOURCE_PROJECTION,
                                                      **self._kw))
            for doc in docs:
                found[(doc["type"], doc["id"])] = _doc_to_resource(doc)
        return found

    def put(self, resource: StoredResource, index: IndexEntries | None, *, expected_version: int | None) -> None:
        try:
            with self.store._atomic():
                self._put(resource, index, expected_version)
        except OperationFailure as exc:
            if isinstance(exc, DuplicateKeyError):
                raise
            if exc.code == WRITE_CONFLICT or exc.has_error_label("TransientTransactionError"):
                # another transaction wrote this document first
                raise VersionConflict(f"{resource.type}/{resource.id} is being changed concurrently") from exc
            raise

    @staticmethod
    def _documents(resource: StoredResource, index: IndexEntries | None) -> tuple[str, dict, dict]:
        """(``_id`` in resources, the fields of its resources document, its versions document)."""
        lu = _lu(resource.last_updated)
        deleted = bool(resource.deleted)
        fields = {"type": resource.type, "id": resource.id, "version": resource.version, "lu": lu,
                  "deleted": deleted, "body": resource.body, "method": resource.method,
                  "last_updated": resource.last_updated,
                  **index_arrays(None if deleted else index)}
        # the version's _id orders the history; take it before the compare-and-set so a later
        # writer of the same resource (who must wait for this one's CAS) always gets a larger one
        version_doc = {"_id": ObjectId(), "type": resource.type, "id": resource.id, "version": resource.version,
                       "lu": lu, "deleted": deleted, "method": resource.method, "body": resource.body,
                       "last_updated": resource.last_updated}
        return f"{resource.type}/{resource.id}", fields, version_doc

    def put_many(self, items: Iterable[tuple[StoredResource, IndexEntries | None, int | None]]) -> None:
        """Runs of creates are inserted with one ``insert_many`` per collection (ordered: the first duplicate
        stops it, as the loop of ``put`` would); updates are compare-and-set one by one."""
        items = list(items)
        start = 0
        while start < len(items):
            end = start
            while end < len(items) and items[end][2] is None:
                end += 1
            if end - start < 2:
                resource, index, expected_version = items[start]
                self.put(resource, index, expected_version=expected_version)
                start += 1
                continue
            try:
                with self.store._atomic():
                    self._create_many(items[start:end])
            except OperationFailure as exc:
                if exc.code == WRITE_CONFLICT or exc.has_error_label("TransientTransactionError"):
                    raise VersionConflict("a resource of this transaction is being changed concurrently") from exc
                raise
            start = end

    def _create_many(self, items: list[tuple[StoredResource, IndexEntries | None, int | None]]) -> None:
        store = self.store
        docs, version_docs = [], []
        for resource, index, _ in items:
            key, fields, version_doc = self._documents(resource, index)
            docs.append({"_id": key, "seq": ObjectId(), **fields})
            version_docs.append(version_doc)
        inserted, duplicate = self._insert_many(store.resources, docs)
        self.undo.extend(("inserted", doc["_id"], doc["version"]) for doc in docs[:inserted])
        if duplicate is not None and self.session is not None:
            raise AlreadyExists(f"{docs[inserted]['_id']} already exists") from duplicate  # the server aborts it
        if inserted:  # without a session: the items before a refused one are written whole, as by put
            done, clash = self._insert_many(store.versions, version_docs[:inserted])
            self.undo.extend(("version", doc["_id"]) for doc in version_docs[:done])
            if clash is not None:
                doc = version_docs[done]
                raise VersionConflict(f"{doc['type']}/{doc['id']} version {doc['version']} already exists") from None
        if duplicate is not None:
            raise AlreadyExists(f"{docs[inserted]['_id']} already exists") from None

    def _insert_many(self, collection: Any, docs: list[dict]) -> tuple[int, BulkWriteError | None]:
        """Insert ``docs`` in order: (how many were inserted, the error when a duplicate key stopped it)."""
        try:
            collection.insert_many(docs, ordered=True, **self._kw)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if len(errors) != 1 or errors[0].get("code") not in DUPLICATE_KEY:
                raise
            return errors[0]["index"], exc
        return len(docs), None

    def _put(self, resource: StoredResource, index: IndexEntries | None, expected_version: int | None) -> None:
        store, kw = self.store, self._kw
        key, fields, version_doc = self._documents(resource, index)
        if expected_version is None:
            try:
                store.resources.insert_one({"_id": key, "seq": ObjectId(), **fields}, **kw)
            except DuplicateKeyError:
                raise AlreadyExists(f"{key} already exists") from None
            self.undo.append(("inserted", key, resource.version))
        else:
            before = store.resources.find_one_and_update(
                {"_id": key, "version": expected_version}, {"$set": fields},
                projection=None if self.session is None else {"_id": 1},
                return_document=ReturnDocument.BEFORE, **kw)
            if before is None:
                raise VersionConflict(f"{key} is not at version {expected_version}")
            self.undo.append(("updated", before, resource.version))
        try:
            store.versions.insert_one(version_doc, **kw)
        except DuplicateKeyError:
            raise VersionConflict(f"{key} version {resource.version} already exists") from None
        self.undo.append(("version", version_doc["_id"]))

    def search(self, query: Any) -> list[tuple[str, str]]:
        self.last_query = query
        return self.store._keys(query, self.session)

    def claim(self, key: str) -> None:
        """Insert ``key`` into ``locks`` (outside the session, so other writers see it at once).

        The key is released when the transaction ends. A holder that commits has already
        released it, so after a successful claim the last search of this transaction is
        run again on the committed state: a match means another request created the
        resource meanwhile, and the claim fails as if the key were still held.
        """
        locks = self.store.locks
        owner = secrets.token_hex(8)
        now = _now()
        doc = {"_id": key, "owner": owner, "expires": now + dt.timedelta(seconds=LOCK_TTL)}
        try:
            locks.insert_one(doc)
        except DuplicateKeyError:
            # a holder that died leaves its key until the TTL monitor passes; take it over if stale
            if locks.delete_one({"_id": key, "expires": {"$lte": now}}).deleted_count == 0:
                raise AlreadyExists(f"another request holds {key!r}") from None
            try:
                locks.insert_one(doc)
            except DuplicateKeyError:
                raise AlreadyExists(f"another request holds {key!r}") from None
        self.claims.append((key, owner))
        if self.last_query is not None:
            if self.store._keys(self.last_query, None):
                raise AlreadyExists(f"a resource matching {key!r} was created concurrently")

    # -- end of the transaction ------------------------------------------------------------------
    def release_claims(self) -> None:
        for key, owner in self.claims:
            try:
                self.store.locks.delete_one({"_id": key, "owner": owner})
            except PyMongoError:  # expires by TTL
                log.warning("could not release conditional-create key %r", key, exc_info=True)
        self.claims = []

    def rollback(self) -> None:
        """Undo the recorded writes, newest first (the fallback without server transactions)."""
        resources, versions = self.store.resources, self.store.versions
        with self.store._atomic():
            for op in reversed(self.undo):
                try:
                    if op[0] == "version":
                        versions.delete_one({"_id": op[1]})
                    elif op[0] == "inserted":
                        resources.delete_one({"_id": op[1], "version": op[2]})
                    elif op[0] == "updated":
                        before, written = op[1], op[2]
                        if resources.replace_one({"_id": before["_id"], "version": written}, before).matched_count == 0:
                            log.error("rollback: %s changed again after this transaction; not restored", before["_id"])
                except PyMongoError:
                    log.error("rollback of %r failed", op[:2], exc_info=True)
        self.undo = []


class MongoStore(Store):
    """A :class:`Store` in one MongoDB database."""

    def __init__(self, client: Any, database: str = "fhir", *, drop_on_close: bool = False,
                 snapshot_chunk: int = SNAPSHOT_CHUNK, snapshot_ttl: int = SNAPSHOT_TTL,
                 transactions: bool | None = None):
        self.client = client
        self.db = client[database]
        self.database = database
        self.drop_on_close = drop_on_close
        self.snapshot_chunk = snapshot_chunk
        self.snapshot_ttl = snapshot_ttl
        self.resources = self.db["resources"]
        self.versions = self.db["versions"]
        self.snapshots = self.db["snapshots"]
        self.locks = self.db["locks"]
        self.is_mock = type(client).__module__.startswith("mongomock")
        # mongomock matches and modifies in two steps without a lock; the server is atomic per document
        self._mock_lock = threading.RLock() if self.is_mock else None
        self._transactions = transactions
        self.ensure_indexes()

    @classmethod
    def from_url(cls, url: str, drop_on_close: bool = False) -> "MongoStore":
        if url.startswith("mongomock://"):
            import mongomock  # test dependency only
            name = urlparse(url).path.strip("/") or "fhir"
            return cls(mongomock.MongoClient(), name, drop_on_close=drop_on_close)
        if url.startswith(("mongodb://", "mongodb+srv://")):
            from pymongo import MongoClient
            client = MongoClient(url, tz_aware=False)
            return cls(client, client.get_default_database("fhir").name, drop_on_close=drop_on_close)
        raise ValueError(f"not a MongoDB URL: {url!r}")

    def ensure_indexes(self) -> None:
        """Create every index (idempotent: an existing identical index is left alone)."""
        for keys, options in RESOURCE_INDEXES:
            self.resources.create_index(keys, **options)
        for keys, options in VERSION_INDEXES:
            self.versions.create_index(keys, **options)
        self.snapshots.create_index([("expires", ASCENDING)], expireAfterSeconds=0)
        self.locks.create_index([("expires", ASCENDING)], expireAfterSeconds=0)

    def close(self) -> None:
        try:
            if self.drop_on_close:
                self.client.drop_database(self.database)
        finally:
            self.client.close()

    # -- transactions ------------------------------------------------------------------------------
    def _atomic(self):
        """A lock around writes (and single-document reads) on mongomock, which is not atomic per
        document across threads; MongoDB itself is, so this is a no-op there."""
        return self._mock_lock if self._mock_lock is not None else contextlib.nullcontext()

    def supports_transactions(self) -> bool:
        """True on a replica set or a sharded cluster (the server has multi-document transactions)."""
        if self._transactions is None:
            if self.is_mock:
                self._transactions = False
            else:
                hello = self.client.admin.command("hello")
                self._transactions = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
        return self._transactions

    @contextmanager
    def transaction(self) -> Iterator[MongoTransaction]:
        if self.supports_transactions():
            yield from self._server_transaction()
        else:
            tx = MongoTransaction(self, None)
            try:
                yield tx
            except BaseException:
                tx.rollback()
                raise
            finally:
                tx.release_claims()

    def _server_transaction(self) -> Iterator[MongoTransaction]:
        from pymongo import ReadPreference
        from pymongo.read_concern import ReadConcern
        from pymongo.write_concern import WriteConcern
        with self.client.start_session() as session:
            session.start_transaction(read_concern=ReadConcern("snapshot"), write_concern=WriteConcern("majority"),
                                      read_preference=ReadPreference.PRIMARY)
            tx = MongoTransaction(self, session)
            try:
                try:
                    yield tx
                except BaseException:
                    if session.in_transaction:
                        session.abort_transaction()
                    raise
                self._commit(session)
            finally:
                tx.release_claims()

    @staticmethod
    def _commit(session: Any) -> None:
        for attempt in range(3):
            try:
                session.commit_transaction()
                return
            except PyMongoError as exc:
                if exc.has_error_label("UnknownTransactionCommitResult") and attempt < 2:
                    continue  # commit is idempotent; retry
                if exc.has_error_label("TransientTransactionError"):
                    raise VersionConflict("the transaction conflicted with another writer") from exc
                raise

    # -- reads ---------------------------------------------------------------------------------
    def read(self, rtype: str, rid: str) -> StoredResource | None:
        with self._atomic():  # mongomock applies $set field by field: read under its lock
            doc = self.resources.find_one({"_id": f"{rtype}/{rid}"}, RESOURCE_PROJECTION)
        return _doc_to_resource(doc) if doc else None

    def vread(self, rtype: str, rid: str, version: int) -> StoredResource | None:
        doc = self.versions.find_one({"type": rtype, "id": rid, "version": int(version)}, RESOURCE_PROJECTION)
        return _doc_to_resource(doc) if doc else None

    def read_many(self, keys: list[tuple[str, str]]) -> list[StoredResource]:
        ids = list(dict.fromkeys(f"{t}/{i}" for t, i in keys))
        out: list[StoredResource] = []
        for start in range(0, len(ids), 1000):
            cursor = self.resources.find({"_id": {"$in": ids[start:start + 1000]}, "deleted": False},
                                         RESOURCE_PROJECTION)
            out.extend(_doc_to_resource(d) for d in cursor)
        return out

    def history(self, rtype: str | None = None, rid: str | None = None, *, since: str | None = None,
                before: str | None = None, current_from: str | None = None, count: int = 50,
                cursor: str | None = None) -> HistoryPage:
        """Newest first: by version for one resource, else by (lu, insertion) descending. With
        ``current_from``, each candidate's next version is looked up (by the ``(type, id, version)`` index)
        and the total is not counted."""
        where: dict = {}
        if rtype:
            where["type"] = rtype
        if rid:
            where["id"] = rid
        lu: dict = {}
        if since:
            lu["$gte"] = _lu(since)
        if before:
            lu["$lt"] = _lu(before)
        if lu:
            where["lu"] = lu
        instance = bool(rtype and rid)
        order = [("version", DESCENDING)] if instance else [("lu", DESCENDING), ("_id", DESCENDING)]
        page_filter = dict(where)
        if cursor:
            state = decode_cursor(cursor)
            try:
                if instance:
                    page_filter = {"$and": [where, {"version": {"$lt": int(state["v"])}}]}
                else:
                    last_lu, last_id = int(state["l"]), ObjectId(state["i"])
                    page_filter = {"$and": [where, {"$or": [{"lu": {"$lt": last_lu}},
                                                            {"lu": last_lu, "_id": {"$lt": last_id}}]}]}
            except (KeyError, TypeError, ValueError, InvalidId):
                raise PageExpired() from None
        projection = {**RESOURCE_PROJECTION, "lu": 1}
        if current_from:
            until = _lu(current_from)
            docs = []
            for doc in self.versions.find(page_filter, projection).sort(order):
                superseded = self.versions.find_one({"type": doc["type"], "id": doc["id"],
                                                     "version": doc["version"] + 1, "lu": {"$lte": until}}, {"_id": 1})
                if superseded is None:
                    docs.append(doc)
                    if len(docs) > count:
                        break
            total = None
        else:
            docs = list(self.versions.find(page_filter, projection).sort(order).limit(count + 1))
            total = self.versions.count_documents(where) if cursor is None else None
        more = len(docs) > count
        docs = docs[:count]
        next_cursor = None
        if more:
            last = docs[-1]
            next_cursor = encode_cursor({"v": last["version"]} if instance
                                        else {"l": last["lu"], "i": str(last["_id"])})
        return HistoryPage([_doc_to_resource(d) for d in docs], next_cursor, total)

    # -- search ----------------------------------------------------------------------------------
    def compiler(self, session: Any = None) -> MongoCompiler:
        kw = {"session": session} if session is not None else {}
        return MongoCompiler(lambda filt, projection: self.resources.find(filt, projection, **kw))

    def compile(self, query: Any, session: Any = None) -> dict:
        return self.compiler(session).compile(query)

    def _keys(self, query: Any, session: Any) -> list[tuple[str, str]]:
        kw = {"session": session} if session is not None else {}
        return [(d["type"], d["id"])
                for d in self.resources.find(self.compile(query, session), {"type": 1, "id": 1}, **kw)]

    def count(self, query: Any) -> int:
        return self.resources.count_documents(self.compile(query))

    def search(self, query: Any, *, count: int, cursor: str | None = None) -> SearchPage:
        if query.sort:
            return self._sorted_page(query, count, cursor)
        where = self.compile(query)
        if cursor:
            state = decode_cursor(cursor)
            try:
                after = ObjectId(state["k"])
            except (KeyError, TypeError, ValueError, InvalidId):
                raise PageExpired() from None
            where = {"$and": [where, {"seq": {"$gt": after}}]}
        docs = list(self.resources.find(where, {**RESOURCE_PROJECTION, "seq": 1}).sort("seq", ASCENDING)
                    .limit(count + 1))
        more = len(docs) > count
        docs = docs[:count]
        return SearchPage([_doc_to_resource(d) for d in docs],
                          encode_cursor({"k": str(docs[-1]["seq"])}) if more and docs else None)

    def _sorted_page(self, query: Any, count: int, cursor: str | None) -> SearchPage:
        """Sorted searches page over a stored snapshot of the ordered matches, so nothing moves
        (a sort key can change on update; keyset paging could then skip or repeat a match)."""
        if cursor is None:
            compiler = self.compiler()
            docs = list(self.resources.find(compiler.compile(query), compiler.sort_projection(query.sort)))
            ids = [d["_id"] for d in compiler.sort_docs(docs, query.sort)]
            offset, total = 0, len(ids)
            page = ids[:count]
            next_cursor = None
            if total > count:
                sid = self.save_snapshot(ids)
                next_cursor = encode_cursor({"s": sid, "o": count, "z": self.snapshot_chunk})
        else:
            state = decode_cursor(cursor)
            try:
                sid, offset, chunk = str(state["s"]), int(state["o"]), int(state["z"])
                if offset < 0 or chunk <= 0:
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise PageExpired() from None
            page, total = self.snapshot_slice(sid, offset, count, chunk)
            next_cursor = (encode_cursor({"s": sid, "o": offset + count, "z": chunk})
                           if offset + count < total else None)
        return SearchPage(self._by_key(page), next_cursor)

    def save_snapshot(self, ids: list[str]) -> str:
        """Store an ordered id list in chunks of ``snapshot_chunk``; returns its id."""
        sid = secrets.token_hex(8)
        expires = _now() + dt.timedelta(seconds=self.snapshot_ttl)
        size = self.snapshot_chunk
        docs = [{"_id": f"{sid}:{n}", "sid": sid, "n": n, "ids": ids[start:start + size], "total": len(ids),
                 "chunk": size, "expires": expires}
                for n, start in enumerate(range(0, len(ids), size))]
        for start in range(0, len(docs), 8):  # a few chunks per round trip keeps messages small
            self.snapshots.insert_many(docs[start:start + 8], ordered=True)
        return sid

    def snapshot_slice(self, sid: str, offset: int, count: int, chunk: int) -> tuple[list[str], int]:
        """ids[offset:offset+count] of a snapshot and its length; PageExpired when it is gone."""
        first, last = offset // chunk, max(offset + count - 1, offset) // chunk
        names = [f"{sid}:{n}" for n in range(first, last + 1)]
        docs = {d["n"]: d for d in self.snapshots.find({"_id": {"$in": names}, "expires": {"$gt": _now()}})}
        if first not in docs:
            # the chunk holding the offset is gone, or the offset is past the end of a live snapshot
            probe = self.snapshots.find_one({"_id": f"{sid}:0", "expires": {"$gt": _now()}}, {"total": 1})
            if probe is None:
                raise PageExpired()
            return [], probe["total"]
        total = docs[first]["total"]
        ids: list[str] = []
        for n in range(first, last + 1):
            if n not in docs:
                if n * chunk < total:
                    raise PageExpired()
                break
            ids.extend(docs[n]["ids"])
        start = offset - first * chunk
        return ids[start:start + count], total

    def _by_key(self, keys: list[str]) -> list[StoredResource]:
        if not keys:
            return []
        docs = self.resources.find({"_id": {"$in": keys}, "deleted": False}, RESOURCE_PROJECTION)
        by_key = {f"{d['type']}/{d['id']}": _doc_to_resource(d) for d in docs}
        return [by_key[k] for k in keys if k in by_key]

    # -- bulk ------------------------------------------------------------------------------------
    def iterate(self, rtype: str) -> Iterator[StoredResource]:
        last = None
        while True:
            where: dict = {"type": rtype, "deleted": False}
            if last is not None:
                where["seq"] = {"$gt": last}
            docs = list(self.resources.find(where, {**RESOURCE_PROJECTION, "seq": 1}).sort("seq", ASCENDING)
                        .limit(500))
            if not docs:
                return
            for doc in docs:
                yield _doc_to_resource(doc)
            last = docs[-1]["seq"]

    def expunge(self, rtype: str, rid: str) -> int:
        with self._atomic():  # versions first: a purge cut short leaves the resource findable, to finish later
            removed = self.versions.delete_many({"type": rtype, "id": rid}).deleted_count
            self.resources.delete_one({"_id": f"{rtype}/{rid}"})  # with its embedded index entries
            return removed

    def reindex(self, rtype: str, index_of) -> int:
        """Rewrite the embedded index entries of every current resource of ``rtype`` with
        ``index_of(resource)``; a resource updated meanwhile already has fresh entries and is skipped."""
        done = 0
        for resource in self.iterate(rtype):
            arrays = index_arrays(index_of(resource))
            with self._atomic():
                result = self.resources.update_one(
                    {"_id": f"{resource.type}/{resource.id}", "version": resource.version, "deleted": False},
                    {"$set": arrays})
            done += result.matched_count
        return done
