"""The embedded default store: SQLite in WAL mode, with side tables for the search index.

Layout (docs/adr/0002-search-index.md):

* ``versions``: every version of every resource (the body bytes returned on read);
* ``resources``: one row per logical resource pointing at its current version; its
  integer ``rpk`` keys the index tables and gives search its stable order;
* ``idx_*``: one row per search value of the current version, per value kind;
* ``search_snapshots``: ordered result lists for sorted searches being paged.

Writers take ``BEGIN IMMEDIATE``, so concurrent writers (threads or worker
processes) are serialised by SQLite itself and compare-and-set on the version is
exact. Readers never block writers (WAL).

Write throughput (docs/adr/0004-validation-and-storage.md, "Write path"): a process's
writers queue in :meth:`SQLiteStore.atomically` and one of them commits everything
queued in one transaction, each action in its own savepoint (group commit: one fsync
for several writes, a failing action rolled back alone); a writer is answered only
after the COMMIT covering its write returned. Writer processes take an exclusive
``flock`` on ``<db>.write-lock`` around their write transactions, so a process
waiting for another's commit is woken by the kernel when it ends instead of polling
in SQLite's busy handler (sleeps of 1, 2, 5, 10... ms). Inside a transaction the writes are
buffered and made in bulk, one multi-row ``INSERT`` per table (:func:`insert_rows`), before
anything reads on the connection and before the commit (:class:`SQLiteTransaction`): a bulk
load's chunk pays each statement once.
"""
from __future__ import annotations

import contextvars
import datetime
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from array import array
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import parse_qs, urlparse

from fhir_server.search.entries import IndexEntries, PackedIndex
from fhir_server.store.base import (AlreadyExists, HistoryPage, PageExpired, SearchPage, Store, StoredResource,
                                    Transaction, VersionConflict)
from fhir_server.store.sqlite_search import SQLCompiler, decode_cursor, encode_cursor

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    vrow INTEGER PRIMARY KEY, type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    last_updated TEXT NOT NULL, lu INTEGER NOT NULL, deleted INTEGER NOT NULL, method TEXT NOT NULL,
    body BLOB, UNIQUE (type, id, version));
CREATE INDEX IF NOT EXISTS versions_type ON versions (type, vrow);
CREATE INDEX IF NOT EXISTS versions_lu ON versions (lu);
CREATE TABLE IF NOT EXISTS resources (
    rpk INTEGER PRIMARY KEY, type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    lu INTEGER NOT NULL, deleted INTEGER NOT NULL, vrow INTEGER NOT NULL, UNIQUE (type, id));
CREATE INDEX IF NOT EXISTS resources_type_lu ON resources (type, lu);
-- paging one type in rpk order (keyset: "type IN (?) AND rpk > ? ORDER BY rpk") as an index range
CREATE INDEX IF NOT EXISTS resources_type_rpk ON resources (type, rpk);
CREATE TABLE IF NOT EXISTS idx_token (
    rpk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, system TEXT, code TEXT, text TEXT);
CREATE INDEX IF NOT EXISTS idx_token_code ON idx_token (type, param, code, system, rpk);
CREATE INDEX IF NOT EXISTS idx_token_rpk ON idx_token (rpk);
CREATE TABLE IF NOT EXISTS idx_string (
    rpk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_string_norm ON idx_string (type, param, norm, rpk);
CREATE INDEX IF NOT EXISTS idx_string_rpk ON idx_string (rpk);
CREATE TABLE IF NOT EXISTS idx_date (
    rpk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, low INTEGER NOT NULL, high INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS idx_date_low ON idx_date (type, param, low, high, rpk);
CREATE INDEX IF NOT EXISTS idx_date_high ON idx_date (type, param, high, rpk);
CREATE INDEX IF NOT EXISTS idx_date_rpk ON idx_date (rpk);
CREATE TABLE IF NOT EXISTS idx_number (
    rpk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, low REAL NOT NULL, high REAL NOT NULL);
CREATE INDEX IF NOT EXISTS idx_number_low ON idx_number (type, param, low, high, rpk);
CREATE INDEX IF NOT EXISTS idx_number_rpk ON idx_number (rpk);
CREATE TABLE IF NOT EXISTS idx_quantity (
    rpk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, low REAL NOT NULL, high REAL NOT NULL,
    system TEXT, code TEXT, ccode TEXT, clow REAL, chigh REAL);
CREATE INDEX IF NOT EXISTS idx_quantity_low ON idx_quantity (type, param, low, high, rpk);
CREATE INDEX IF NOT EXISTS idx_quantity_clow ON idx_quantity (type, param, ccode, clow, rpk);
CREATE INDEX IF NOT EXISTS idx_quantity_rpk ON idx_quantity (rpk);
CREATE TABLE IF NOT EXISTS idx_reference (
    rpk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, target_type TEXT, target_id TEXT,
    url TEXT, version TEXT);
CREATE INDEX IF NOT EXISTS idx_reference_target ON idx_reference (type, param, target_id, target_type, rpk);
CREATE INDEX IF NOT EXISTS idx_reference_reverse ON idx_reference (target_type, target_id, param, rpk);
CREATE INDEX IF NOT EXISTS idx_reference_url ON idx_reference (type, param, url, rpk) WHERE url IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_reference_rpk ON idx_reference (rpk);
CREATE TABLE IF NOT EXISTS idx_uri (
    rpk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, uri TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_uri_uri ON idx_uri (type, param, uri, rpk);
CREATE INDEX IF NOT EXISTS idx_uri_rpk ON idx_uri (rpk);
CREATE TABLE IF NOT EXISTS idx_composite (
    rpk INTEGER NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, system TEXT, code TEXT,
    v_system TEXT, v_code TEXT, v_low REAL, v_high REAL, v_text TEXT, v_ccode TEXT, v_clow REAL, v_chigh REAL);
CREATE INDEX IF NOT EXISTS idx_composite_code ON idx_composite (type, param, code, system, rpk);
CREATE INDEX IF NOT EXISTS idx_composite_rpk ON idx_composite (rpk);
CREATE TABLE IF NOT EXISTS search_snapshots (
    sid TEXT PRIMARY KEY, created INTEGER NOT NULL, rpks BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB);
"""

T = TypeVar("T")

SNAPSHOT_TTL = 3600  # seconds a sorted search's page links stay valid

INDEX_TABLES = ("idx_token", "idx_string", "idx_date", "idx_number", "idx_quantity", "idx_reference",
                "idx_uri", "idx_composite")


def _row_to_resource(row: sqlite3.Row | tuple) -> StoredResource:
    rtype, rid, version, last_updated, deleted, method, body = row
    return StoredResource(rtype, rid, version, last_updated, bool(deleted), body, method)


_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def _lu(last_updated: str) -> int:
    """The microseconds since the epoch of a version's ``lastUpdated`` (the low end of its range)."""
    # fast path for what the services write, "YYYY-MM-DDThh:mm:ss.ffffffZ": exactly parse_range's low end
    if len(last_updated) == 27 and last_updated[10] == "T" and last_updated[26] == "Z" and last_updated[19] == ".":
        try:
            when = datetime.datetime.fromisoformat(last_updated[:26])
        except ValueError:
            pass  # e.g. a leap second: parse_range knows
        else:
            if when.year > 0 and last_updated[:26].isascii() and last_updated[20:26].isdigit():
                return (((when.toordinal() - _EPOCH_ORDINAL) * 86400 + when.hour * 3600 + when.minute * 60
                         + when.second) * 1_000_000 + when.microsecond)
    from fhir_server.model.dates import parse_range
    return parse_range(last_updated)[0]


# the index rows of one resource: (table, its rows) for each table it has entries in
def _index_rows(rpk: int, rtype: str, index: IndexEntries | PackedIndex) -> Iterator[tuple[str, list[tuple]]]:
    if isinstance(index, PackedIndex):  # the tuples are the columns after (rpk, type)
        for table, rows in zip(PACKED_TABLES, index.packed):
            if rows:
                yield table, [(rpk, rtype, *row) for row in rows]
        if index.composites:
            yield "idx_composite", [(rpk, rtype, *composite_row(e)) for e in index.composites]
        return
    if index.tokens:
        yield "idx_token", [(rpk, rtype, e.param, e.system, e.code, e.text) for e in index.tokens]
    if index.strings:
        yield "idx_string", [(rpk, rtype, e.param, e.normalized, e.exact) for e in index.strings]
    if index.dates:
        yield "idx_date", [(rpk, rtype, e.param, e.low, e.high) for e in index.dates]
    if index.numbers:
        yield "idx_number", [(rpk, rtype, e.param, e.low, e.high) for e in index.numbers]
    if index.quantities:
        yield "idx_quantity", [(rpk, rtype, e.param, e.low, e.high, e.system, e.code, e.canonical_code,
                                e.canonical_low, e.canonical_high) for e in index.quantities]
    if index.references:
        yield "idx_reference", [(rpk, rtype, e.param, e.target_type, e.target_id, e.url, e.version)
                                for e in index.references]
    if index.uris:
        yield "idx_uri", [(rpk, rtype, e.param, e.uri) for e in index.uris]
    if index.composites:
        yield "idx_composite", [(rpk, rtype, *composite_row(e)) for e in index.composites]


PACKED_TABLES = ("idx_token", "idx_string", "idx_date", "idx_number", "idx_quantity", "idx_reference", "idx_uri")
INSERT_INDEX = {"idx_token": "INSERT INTO idx_token VALUES (?,?,?,?,?,?)",
                "idx_string": "INSERT INTO idx_string VALUES (?,?,?,?,?)",
                "idx_date": "INSERT INTO idx_date VALUES (?,?,?,?,?)",
                "idx_number": "INSERT INTO idx_number VALUES (?,?,?,?,?)",
                "idx_quantity": "INSERT INTO idx_quantity VALUES (?,?,?,?,?,?,?,?,?,?)",
                "idx_reference": "INSERT INTO idx_reference VALUES (?,?,?,?,?,?,?)",
                "idx_uri": "INSERT INTO idx_uri VALUES (?,?,?,?)",
                "idx_composite": "INSERT INTO idx_composite VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"}
DELETE_INDEX = {table: f"DELETE FROM {table} WHERE rpk=?" for table in INDEX_TABLES}
INSERT_VERSIONS = ("INSERT INTO versions (vrow, type, id, version, last_updated, lu, deleted, method, body)"
                   " VALUES (?,?,?,?,?,?,?,?,?)")
INSERT_RESOURCES = "INSERT INTO resources (rpk, type, id, version, lu, deleted, vrow) VALUES (?,?,?,?,?,?,?)"
MAX_VARIABLES = 32766  # SQLite's limit on the parameters of one statement (since 3.32)
MANY_ROWS = 50  # from this many rows on, one statement of many rows (fewer: executemany)


def insert_rows(conn: sqlite3.Connection, insert: str, rows: list[tuple]) -> None:
    """``insert`` (an ``INSERT ... VALUES (?,...)`` of one row) for every row of ``rows``; a batch of
    :data:`MANY_ROWS` or more as few statements of many rows each (``VALUES (...), (...), ...``).

    Why not ``executemany`` for a batch: it steps the statement once per row, and the sqlite3 module gives the
    interpreter lock away around every step; a thread writing a batch while other threads of its process run
    Python then waits for the lock again after each row (up to the switch interval, 5 ms). One statement of
    many rows is one step: the whole insertion runs without the interpreter lock. The few rows of one
    request's write keep ``executemany``, whose statement stays compiled in the connection's cache (a
    multi-row statement is compiled for its row count: measured ~0.1 ms more per create)."""
    if len(rows) < MANY_ROWS:
        if rows:
            conn.executemany(insert, rows)
        return
    head, _, values = insert.partition(" VALUES ")
    step = MAX_VARIABLES // len(rows[0])
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        conn.execute(f"{head} VALUES {','.join([values] * len(chunk))}", [v for row in chunk for v in row])


_CURRENT_WITH_RPK = ("SELECT r.rpk, v.type, v.id, v.version, v.last_updated, v.deleted, v.method, v.body"
                     " FROM resources r JOIN versions v ON v.vrow = r.vrow WHERE r.type=? AND r.id=?")


class SQLiteTransaction(Transaction):
    """Writes are buffered and written in bulk (one multi-row statement per table) when the transaction, or the
    group-commit action, ends, and before anything reads the store on this connection (``search`` here, any
    read of the store from this thread): a chunk of a bulk load pays each statement once, not once per
    resource. The checks stay where they were: :meth:`put` raises :class:`AlreadyExists` or
    :class:`VersionConflict` itself, against the stored state plus this transaction's own writes.

    Row ids (``vrow``, ``rpk``) are given explicitly, as SQLite would (the largest one plus one): the writer
    holds the database's write lock, and nothing else writes on its connection while the transaction is open.
    ``current`` keeps what it read or wrote (nothing else can change it before the transaction ends)."""

    def __init__(self, store: "SQLiteStore", conn: sqlite3.Connection):
        self.store = store
        self.conn = conn
        self._known: dict[tuple[str, str], tuple[int | None, StoredResource | None]] = {}  # key -> (rpk, current)
        self._versions: list[tuple] = []  # pending rows of versions
        self._created: list[tuple] = []  # pending rows of resources
        self._changed: list[tuple] = []  # pending updates of resources rows
        self._dropped: list[tuple[int]] = []  # rpks whose index rows go (before the pending ones are inserted)
        self._rows: dict[str, list[tuple]] = {}  # index table -> pending rows
        self._indexed: set[int] = set()  # rpks with pending index rows
        self._next_vrow = 0  # next row ids to give (0: read them first)
        self._next_rpk = 0

    def current(self, rtype: str, rid: str) -> StoredResource | None:
        known = self._known.get((rtype, rid))
        if known is None:
            known = self._read((rtype, rid))
        return known[1]

    def current_many(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], StoredResource | None]:
        keys = list(keys)
        known = self._known
        wanted: dict[str, list[str]] = {}
        for key in keys:
            if key not in known:
                wanted.setdefault(key[0], []).append(key[1])
        for rtype, ids in wanted.items():
            ids = list(dict.fromkeys(ids))
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                for key in zip(repeat(rtype), chunk):
                    known[key] = (None, None)
                rows = self.conn.execute(_CURRENT_WITH_RPK.replace("r.id=?", f"r.id IN ({','.join('?' * len(chunk))})"),
                                         (rtype, *chunk))
                for row in rows:
                    known[(row[1], row[2])] = (row[0], _row_to_resource(row[1:]))
        return {key: known[key][1] for key in keys}

    def _read(self, key: tuple[str, str]) -> tuple[int | None, StoredResource | None]:
        row = self.conn.execute(_CURRENT_WITH_RPK, key).fetchone()
        known = (row[0], _row_to_resource(row[1:])) if row else (None, None)
        self._known[key] = known
        return known

    def put(self, resource: StoredResource, index: IndexEntries | None, *, expected_version: int | None) -> None:
        key = (resource.type, resource.id)
        known = self._known.get(key)
        if known is None:
            row = self.conn.execute("SELECT rpk, version FROM resources WHERE type=? AND id=?", key).fetchone()
            rpk, version = row if row else (None, None)
        else:
            rpk, version = known[0], known[1].version if known[1] is not None else None
        if expected_version is None and rpk is not None:
            raise AlreadyExists(f"{resource.type}/{resource.id} already exists")
        if expected_version is not None and (rpk is None or version != expected_version):
            raise VersionConflict(f"{resource.type}/{resource.id} is at version "
                                  f"{version if rpk is not None else 'none'}, not {expected_version}")
        lu = _lu(resource.last_updated)
        if rpk is not None and rpk in self._indexed:  # written earlier in this transaction: its rows go first
            self.flush()
        if not self._next_vrow:
            self._next_ids()
        created = rpk is None
        if created:
            rpk = self._next_rpk
        new_rows = list(_index_rows(rpk, resource.type, index)) if index is not None and not resource.deleted else ()
        # nothing can fail from here on: the write is buffered whole or not at all
        vrow = self._next_vrow
        self._next_vrow += 1
        deleted = int(resource.deleted)
        self._versions.append((vrow, resource.type, resource.id, resource.version, resource.last_updated, lu, deleted,
                               resource.method, resource.body))
        if created:
            self._next_rpk += 1
            self._created.append((rpk, resource.type, resource.id, resource.version, lu, deleted, vrow))
        else:
            self._changed.append((resource.version, lu, deleted, vrow, rpk))
            self._dropped.append((rpk,))
        if new_rows:
            rows = self._rows
            for table, new in new_rows:
                pending = rows.get(table)
                if pending is None:
                    rows[table] = new
                else:
                    pending += new
            self._indexed.add(rpk)
        self._known[key] = (rpk, resource)

    def put_many(self, items: Iterable[tuple[StoredResource, IndexEntries | None, int | None]]) -> None:
        items = list(items)
        self.current_many([(resource.type, resource.id) for resource, _, _ in items])  # one lookup for them all
        put = self.put
        for resource, index, expected_version in items:
            put(resource, index, expected_version=expected_version)

    def _next_ids(self) -> None:
        conn = self.conn
        self._next_vrow = (conn.execute("SELECT max(vrow) FROM versions").fetchone()[0] or 0) + 1
        self._next_rpk = (conn.execute("SELECT max(rpk) FROM resources").fetchone()[0] or 0) + 1

    def flush(self) -> None:
        """Write what is buffered (the statements every ``put`` would have made, in bulk)."""
        if not self._versions:
            return
        conn = self.conn
        insert_rows(conn, INSERT_VERSIONS, self._versions)
        if self._created:
            insert_rows(conn, INSERT_RESOURCES, self._created)
        if self._changed:
            conn.executemany("UPDATE resources SET version=?, lu=?, deleted=?, vrow=? WHERE rpk=?", self._changed)
        if self._dropped:
            for table in INDEX_TABLES:
                conn.executemany(DELETE_INDEX[table], self._dropped)
        for table, rows in self._rows.items():
            insert_rows(conn, INSERT_INDEX[table], rows)
        self._versions, self._created, self._changed, self._dropped = [], [], [], []
        self._rows = {}
        self._indexed = set()
        self._next_vrow = self._next_rpk = 0

    def search(self, query: Any) -> list[tuple[str, str]]:
        self.flush()
        sql, args = self.store.compiler.select_keys(query)
        return [(t, i) for t, i in self.conn.execute(sql, args)]

    def claim(self, key: str) -> None:
        """Nothing to hold: BEGIN IMMEDIATE already serialises the search and the create."""


_lock_files: dict[str, list[int]] = {}  # realpath of the database -> [pid, fd of its write-lock file, users]
_lock_files_guard = threading.Lock()


def _process_lock_file(path: str) -> tuple[int, int]:
    """Open (or share) this process's write-lock file of a database; one more user of it."""
    key = os.path.realpath(path)
    with _lock_files_guard:
        held = _lock_files.get(key)
        if held is None or held[0] != os.getpid():
            fd = os.open(key + ".write-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _lock_files[key] = held = [os.getpid(), fd, 0]
        held[2] += 1
        return held[0], held[1]


def _release_lock_file(path: str) -> None:
    """One user fewer; the last one closes the file."""
    key = os.path.realpath(path)
    with _lock_files_guard:
        held = _lock_files.get(key)
        if held is not None and held[0] == os.getpid():
            held[2] -= 1
            if held[2] <= 0:
                del _lock_files[key]
                os.close(held[1])


class _RolledBack(Exception):
    """The only action of a batch failed: roll the transaction back (its error is already recorded)."""


def write_index(conn: sqlite3.Connection, rpk: int, rtype: str, index: IndexEntries) -> None:
    """Insert one resource's index entries (its previous rows were removed by the caller)."""
    for table, rows in _index_rows(rpk, rtype, index):
        insert_rows(conn, INSERT_INDEX[table], rows)


def composite_row(entry) -> tuple:
    """Flatten a composite (token, value) entry into the idx_composite columns."""
    first, second = entry.components[0], entry.components[1]
    system, code = getattr(first, "system", None), getattr(first, "code", None)
    v_system = v_code = v_low = v_high = v_text = v_ccode = v_clow = v_chigh = None
    kind = type(second).__name__
    if kind == "TokenEntry":
        v_system, v_code = second.system, second.code
    elif kind in ("QuantityEntry",):
        v_system, v_code, v_low, v_high = second.system, second.code, second.low, second.high
        v_ccode, v_clow, v_chigh = second.canonical_code, second.canonical_low, second.canonical_high
    elif kind in ("DateEntry", "NumberEntry"):
        v_low, v_high = second.low, second.high
    elif kind == "StringEntry":
        v_text = second.normalized
    elif kind == "ReferenceEntry":
        v_system, v_code = second.target_type, second.target_id
        v_text = second.url
    return entry.param, system, code, v_system, v_code, v_low, v_high, v_text, v_ccode, v_clow, v_chigh


class _Queued:
    """One caller's action waiting in the group-commit queue, and its outcome."""

    __slots__ = ("action", "context", "event", "lead", "result", "error")

    def __init__(self, action: Callable, context: contextvars.Context):
        self.action = action
        self.context = context
        self.event = threading.Event()
        self.lead = False  # woken to commit the queue itself rather than with an outcome
        self.result: Any = None
        self.error: BaseException | None = None


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file, safe for several threads and worker processes."""

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "FULL", base_urls: tuple[str, ...] = (),
                 group_commit: bool = True):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous.upper()
        self.group_commit = group_commit
        self._local = threading.local()
        self._lock_file: tuple[int, int] | None = None  # (pid, fd) of <db>.write-lock (_process_lock_file)
        self._queue_lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._committing = False  # a thread of this process is committing the queue
        self.batches = 0  # group commits made by this process (and the actions they held), for tests and benches
        self.batched = 0
        self.compiler = SQLCompiler()
        self._conn().executescript(SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> "SQLiteStore":
        parsed = urlparse(url)
        path = url[len("sqlite:///"):].split("?")[0] if url.startswith("sqlite:///") else parsed.path
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        return cls(path or "var/fhir.sqlite3", synchronous=options.get("synchronous", "FULL"),
                   group_commit=options.get("group_commit", "on").lower() not in ("off", "0", "false", "no"))

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute(f"PRAGMA cache_size=-{self.CACHE_KIB}")
            conn.execute("PRAGMA temp_store=MEMORY")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _writer_fd(self) -> int | None:
        """This process's descriptor of ``<db>.write-lock``, shared by every store object of the process on
        that file (flock locks belong to the open file: the process's writers never exclude one another,
        so a thread writing through two store objects cannot wait for itself; a forked child opens its own)."""
        if self.path == ":memory:":
            return None
        held = self._lock_file
        if held is None or held[0] != os.getpid():
            self._lock_file = held = _process_lock_file(self.path)
        return held[1]

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        fd = self._writer_fd()
        if fd is not None:
            # Other writer processes wait here, woken by the kernel as soon as this commit ends.
            # Threads of one process share the open file and are not excluded by it: SQLite's own
            # lock (BEGIN IMMEDIATE) stays what serialises writers; this only spares the polling.
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def transaction(self) -> Iterator[SQLiteTransaction]:
        with self._write() as conn:
            tx = SQLiteTransaction(self, conn)
            with self._open(tx):
                yield tx
                tx.flush()

    @contextmanager
    def _open(self, tx: SQLiteTransaction) -> Iterator[None]:
        """``tx`` is this thread's open transaction while the block runs: reads of the store from this thread
        write its buffered writes first (they see them, as they would on this connection without the buffer)."""
        outer = getattr(self._local, "open", None)
        self._local.open = tx
        try:
            yield
        finally:
            self._local.open = outer

    def _reader(self) -> sqlite3.Connection:
        """This thread's connection, for a read: with the writes buffered by its open transaction written."""
        tx = getattr(self._local, "open", None)
        if tx is not None:
            tx.flush()
        return self._conn()

    # -- group commit ----------------------------------------------------------------------------
    def atomically(self, action: Callable[[SQLiteTransaction], T]) -> T:
        """Run ``action`` in a transaction and commit it, possibly with other threads' actions.

        The caller queues its action. If no thread of this process is committing, it commits the
        queue itself; otherwise it waits, and either gets its outcome or, when the committing thread
        finished a batch that did not hold its action, is asked to commit the next batch. A batch is
        one ``BEGIN IMMEDIATE`` ... ``COMMIT`` (one fsync) with every action in its own savepoint:
        an action that raises is rolled back alone and its exception goes to its caller; if the
        COMMIT itself fails, every action of the batch gets that error. Nothing is answered before
        the COMMIT covering it returned. Actions run in a copy of their caller's contextvars context.
        """
        if not self.group_commit or getattr(self._local, "committing", False):
            with self.transaction() as tx:  # nested use from inside an action: its own transaction
                return action(tx)
        item = _Queued(action, contextvars.copy_context())
        with self._queue_lock:
            self._queue.append(item)
            lead = not self._committing
            if lead:
                self._committing = True
        if not lead:
            item.event.wait()
            lead = item.lead
        if lead:
            self._commit_queue()
        if item.error is not None:
            raise item.error
        return item.result

    def _commit_queue(self) -> None:
        """Commit the queued actions as one batch, then hand over to the next waiting writer.

        The batch is taken once the write lock is held, so that writers who queued while this
        process waited for another's commit are committed together."""
        batch: list[_Queued] = []
        try:
            self._local.committing = True
            self._commit_batch(batch)
        finally:
            self._local.committing = False
            with self._queue_lock:
                if self._queue:  # arrived while this batch was committed: its first writer commits them
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.event.set()
                else:
                    self._committing = False
            for item in batch:
                item.event.set()

    def _commit_batch(self, batch: list[_Queued]) -> None:
        """Fill ``batch`` with the queue once the write lock is held and commit it (outcomes in the items)."""
        try:
            with self._write() as conn:
                with self._queue_lock:
                    batch.extend(self._queue)
                    self._queue.clear()
                savepoints = len(batch) > 1
                for item in batch:
                    tx = SQLiteTransaction(self, conn)
                    if savepoints:
                        conn.execute("SAVEPOINT action")
                    try:
                        with self._open(tx):
                            item.result = item.context.run(item.action, tx)
                            tx.flush()  # inside its savepoint
                    except BaseException as exc:  # this action's outcome: rolled back alone
                        item.error = exc
                        if savepoints:
                            conn.execute("ROLLBACK TO action")
                    if savepoints:
                        conn.execute("RELEASE action")
                if all(item.error is not None for item in batch):
                    raise _RolledBack()
            self.batches += 1
            self.batched += len(batch)
        except _RolledBack:
            pass
        except BaseException as exc:  # BEGIN, a savepoint or the COMMIT failed: nothing of the batch landed
            if not batch:  # failed before the batch was taken (the lock or BEGIN): its writers get the error
                with self._queue_lock:
                    batch.extend(self._queue)
                    self._queue.clear()
            for item in batch:
                if item.error is None:
                    item.error = exc
                    item.result = None

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the same committed state."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    CACHE_KIB = 64 << 10  # a connection's page cache (64 MiB)
    BULK_CACHE_KIB = 1 << 20  # 1 GiB: the index B-trees a large load inserts into stay in memory
    CHECKPOINT_PAGES = 1000  # SQLite's default WAL auto-checkpoint (pages of WAL)
    BULK_CHECKPOINT_PAGES = 10_000  # ~40 MB of WAL between the checkpoints of a large load

    @contextmanager
    def bulk_writes(self) -> Iterator[None]:
        """While the block runs, this thread's connection has a page cache of :attr:`BULK_CACHE_KIB` and
        checkpoints the WAL every :attr:`BULK_CHECKPOINT_PAGES` pages instead of every 1,000.

        Why: a million-resource load inserts index rows all over B-trees of gigabytes; each page that fell
        out of a 64 MiB cache is read again (measured: +6 % items/s for an $import of 100,000 care items).
        And each checkpoint writes every page changed since the last one back into the database file, then
        waits for the disk (synchronous=FULL): on a store of 800,000 care items that wait was ~0.3 ms per
        imported item, most of the writer's time. Ten times fewer checkpoints write a page changed by many
        chunks once instead of ten times (measured there: ~+15 % items/s). The WAL grows to ~40 MB in
        between; durability is unchanged (every commit is still synced). Both go back to normal after."""
        conn = self._conn()
        conn.execute(f"PRAGMA cache_size=-{self.BULK_CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint={self.BULK_CHECKPOINT_PAGES}")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint={self.CHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA cache_size=-{self.CACHE_KIB}")
            conn.execute("PRAGMA shrink_memory")

    def close_thread(self) -> None:
        """Close the calling thread's connection only (a worker thread ending): the process's write-lock
        file stays open for the other threads, which may be inside a write right now."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        self.close_thread()
        held, self._lock_file = self._lock_file, None
        if held is not None and held[0] == os.getpid():
            _release_lock_file(self.path)

    # -- reads -------------------------------------------------------------------------------
    _SELECT_VERSION = "SELECT v.type, v.id, v.version, v.last_updated, v.deleted, v.method, v.body FROM versions v"

    def _current(self, conn: sqlite3.Connection, rtype: str, rid: str) -> StoredResource | None:
        row = conn.execute(self._SELECT_VERSION + " JOIN resources r ON r.vrow = v.vrow WHERE r.type=? AND r.id=?",
                           (rtype, rid)).fetchone()
        return _row_to_resource(row) if row else None

    def read(self, rtype: str, rid: str) -> StoredResource | None:
        return self._current(self._reader(), rtype, rid)

    def vread(self, rtype: str, rid: str, version: int) -> StoredResource | None:
        row = self._reader().execute(self._SELECT_VERSION + " WHERE v.type=? AND v.id=? AND v.version=?",
                                   (rtype, rid, version)).fetchone()
        return _row_to_resource(row) if row else None

    def read_many(self, keys: list[tuple[str, str]]) -> list[StoredResource]:
        out: list[StoredResource] = []
        conn = self._reader()
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        for rtype, ids in by_type.items():
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(self._SELECT_VERSION + " JOIN resources r ON r.vrow = v.vrow"
                                    f" WHERE r.type=? AND r.id IN ({marks}) AND r.deleted=0", (rtype, *chunk))
                out.extend(_row_to_resource(r) for r in rows)
        return out

    def history(self, rtype: str | None = None, rid: str | None = None, *, since: str | None = None,
                before: str | None = None, current_from: str | None = None, count: int = 50,
                cursor: str | None = None) -> HistoryPage:
        where, args = [], []
        if rtype:
            where.append("v.type=?")
            args.append(rtype)
        if rid:
            where.append("v.id=?")
            args.append(rid)
        if since:
            where.append("v.lu>=?")
            args.append(_lu(since))
        if before:
            where.append("v.lu<?")
            args.append(_lu(before))
        if current_from:  # not superseded by then: no next version written at or before it
            where.append("NOT EXISTS (SELECT 1 FROM versions n WHERE n.type=v.type AND n.id=v.id"
                         " AND n.version=v.version+1 AND n.lu<=?)")
            args.append(_lu(current_from))
        if cursor:
            where.append("v.vrow<?")
            args.append(int(decode_cursor(cursor)["v"]))
        sql = self._SELECT_VERSION.replace("SELECT ", "SELECT v.vrow, ", 1)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY v.vrow DESC LIMIT ?"
        with self._snapshot() as conn:
            rows = conn.execute(sql, (*args, count + 1)).fetchall()
            total = None
            if cursor is None:
                count_sql = "SELECT count(*) FROM versions v" + (" WHERE " + " AND ".join(where) if where else "")
                total = conn.execute(count_sql, args).fetchone()[0]
        more = len(rows) > count
        rows = rows[:count]
        entries = [_row_to_resource(r[1:]) for r in rows]
        next_cursor = encode_cursor({"v": rows[-1][0]}) if more else None
        return HistoryPage(entries, next_cursor, total)

    # -- search ------------------------------------------------------------------------------
    def search(self, query: Any, *, count: int, cursor: str | None = None) -> SearchPage:
        if query.sort:
            return self._sorted_page(query, count, cursor)
        with self._snapshot() as conn:
            sql, args = self.compiler.select_page(query, count + 1, decode_cursor(cursor) if cursor else None)
            rows = conn.execute(sql, args).fetchall()
        more = len(rows) > count
        rows = rows[:count]
        resources = [_row_to_resource(r[1:]) for r in rows]
        return SearchPage(resources, encode_cursor({"k": rows[-1][0]}) if more else None)

    def _sorted_page(self, query: Any, count: int, cursor: str | None) -> SearchPage:
        """Sorted searches page over a stored snapshot of the ordered matches, so nothing moves.

        A sort key can change when a resource is updated, so keyset paging could skip or
        repeat it; the ordered match list is kept for SNAPSHOT_TTL seconds instead.
        """
        conn = self._reader()
        if cursor is None:
            sql, args = self.compiler.select_sorted_rpks(query)
            rpks = array("q", (r[0] for r in conn.execute(sql, args)))
            sid, offset = secrets.token_hex(8), 0
            if len(rpks) > count:
                with self._write() as wconn:
                    wconn.execute("DELETE FROM search_snapshots WHERE created < ?",
                                  (int(time.time()) - SNAPSHOT_TTL,))
                    wconn.execute("INSERT INTO search_snapshots VALUES (?,?,?)",
                                  (sid, int(time.time()), rpks.tobytes()))
        else:
            state = decode_cursor(cursor)
            sid, offset = state["s"], int(state["o"])
            row = conn.execute("SELECT rpks FROM search_snapshots WHERE sid=? AND created >= ?",
                               (sid, int(time.time()) - SNAPSHOT_TTL)).fetchone()
            if row is None:
                raise PageExpired()
            rpks = array("q")
            rpks.frombytes(row[0])
        page = list(rpks[offset:offset + count])
        with self._snapshot() as rconn:
            resources = self._by_rpk(rconn, page)
        more = offset + count < len(rpks)
        return SearchPage(resources, encode_cursor({"s": sid, "o": offset + count}) if more else None)

    def _by_rpk(self, conn: sqlite3.Connection, rpks: list[int]) -> list[StoredResource]:
        if not rpks:
            return []
        marks = ",".join("?" * len(rpks))
        rows = conn.execute("SELECT r.rpk, v.type, v.id, v.version, v.last_updated, v.deleted, v.method, v.body"
                            f" FROM resources r JOIN versions v ON v.vrow = r.vrow WHERE r.rpk IN ({marks})"
                            " AND r.deleted = 0", rpks).fetchall()
        by_rpk = {r[0]: _row_to_resource(r[1:]) for r in rows}
        return [by_rpk[k] for k in rpks if k in by_rpk]

    def count(self, query: Any) -> int:
        sql, args = self.compiler.count(query)
        return self._reader().execute(sql, args).fetchone()[0]

    def iterate(self, rtype: str) -> Iterator[StoredResource]:
        last = 0
        while True:
            rows = self._reader().execute(
                "SELECT r.rpk, v.type, v.id, v.version, v.last_updated, v.deleted, v.method, v.body"
                " FROM resources r JOIN versions v ON v.vrow = r.vrow"
                " WHERE r.type=? AND r.deleted=0 AND r.rpk>? ORDER BY r.rpk LIMIT 500", (rtype, last)).fetchall()
            if not rows:
                return
            for r in rows:
                yield _row_to_resource(r[1:])
            last = rows[-1][0]

    def expunge(self, rtype: str, rid: str) -> int:
        with self._write() as conn:
            row = conn.execute("SELECT rpk FROM resources WHERE type=? AND id=?", (rtype, rid)).fetchone()
            if row is not None:
                for table in INDEX_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE rpk=?", (row[0],))
                conn.execute("DELETE FROM resources WHERE rpk=?", (row[0],))
            return conn.execute("DELETE FROM versions WHERE type=? AND id=?", (rtype, rid)).rowcount

    def reindex(self, rtype: str, index_of) -> int:
        """Rewrite the index rows of every current resource of ``rtype`` with ``index_of(resource)``.

        One short write transaction per resource, so it can run beside the server; a resource
        updated or deleted meanwhile already has fresh entries and is skipped (not counted)."""
        done = 0
        for resource in list(self.iterate(rtype)):
            entries = index_of(resource)
            with self._write() as conn:
                row = conn.execute("SELECT rpk, version, deleted FROM resources WHERE type=? AND id=?",
                                   (resource.type, resource.id)).fetchone()
                if row is None or row[1] != resource.version or row[2]:
                    continue
                rpk = row[0]
                for table in INDEX_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE rpk=?", (rpk,))
                write_index(conn, rpk, resource.type, entries)
            done += 1
        return done
