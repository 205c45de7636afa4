"""Bulk loading for ``fhir-server load``: validated chunks written one store transaction each, resumable.

Every resource goes through the normal write path in its two steps
(:meth:`ResourceService.prepare`, then ``create_in``/``update_in`` inside a
transaction; docs/adr/0004-validation-and-storage.md). The first step (base and
profile validation, index entries), which is most of the CPU, runs in worker
processes when ``workers`` > 0, several chunks ahead; the main process writes each
chunk, in input order, in ONE store transaction (several times faster than a
transaction per resource). When a resource of the chunk is refused at write time,
the chunk is written again one resource at a time so that only the bad ones are
rejected, with the reason. The position reached is saved after every chunk in a
small state file, so an interrupted load started again with ``--resume`` continues
where it stopped instead of creating resources twice.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from fhir_server.access.gate import Principal
from fhir_server.model.outcome import FHIRError
from fhir_server.services.resources import Prepared, ResourceService

log = logging.getLogger(__name__)
# Worker processes run at a lower CPU priority: when the machine is busy, the serial writer and the requests
# of the serving process go first (bench/insurer.py --modes bulk+reads, 20,000 items: reads 161 -> 236/s,
# p99 49 -> 28 ms, for 858 -> 785 items/s). 0 keeps the workers at the parent's priority.
NICE = int(os.environ.get("FHIR_SERVER_PREPARE_NICE", "10"))
Item = tuple[str, object]  # (where it came from, parsed resource or the parse error)
Ready = tuple[str, "Prepared | str"]  # (where, prepared resource or why it is rejected)


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: int = 0  # already loaded by an earlier, interrupted run
    rejected: list[tuple[str, str]] = field(default_factory=list)


class LoadState:
    """The number of items already loaded from one exact list of input files."""

    def __init__(self, path: Path, inputs: list[Path]):
        self.path = path
        digest = hashlib.sha256()
        for item in inputs:
            stat = item.stat()
            digest.update(f"{item.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        self.key = digest.hexdigest()

    def done(self) -> int:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return 0
        return int(state.get("done", 0)) if state.get("inputs") == self.key else 0

    def save(self, done: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"inputs": self.key, "done": done}))
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prepare_item(resources: ResourceService, resource: object) -> Prepared:
    """The first write step for one loaded resource (raises :class:`FHIRError` when it is refused).

    Resources keep their own id, so references between loaded files hold: a resource with an id
    is an update (create-on-update) when its type allows updates, else a create under that id."""
    if isinstance(resource, Exception):
        raise FHIRError.of(400, "structure", str(resource))
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise FHIRError.of(400, "structure", "not a FHIR resource")
    rtype, rid = resource["resourceType"], resource.get("id")
    resources.served(rtype, "create")
    if rid and "update" in resources.definitions.served[rtype].interactions:
        return resources.prepare("update", rtype, resource, rid)
    return resources.prepare("create", rtype, resource, rid or None)


def prepare_chunk(resources: ResourceService, chunk: list[Item]) -> list[Ready]:
    out: list[Ready] = []
    for where, resource in chunk:
        try:
            out.append((where, prepare_item(resources, resource)))
        except FHIRError as exc:
            out.append((where, describe(exc)))
    return out


def _worker_prepare_chunk(resources: ResourceService, chunk: list[Item]) -> list[Ready]:
    """:func:`prepare_chunk` in a worker process, answered lean: without the resources (the main process has
    them: :func:`_reattached`) nor the validation's warnings (a load reports only what it rejects)."""
    out = prepare_chunk(resources, chunk)
    for _, prepared in out:
        if isinstance(prepared, Prepared):
            prepared.lean()
    return out


def _reattached(chunk: list[Item], ready: list[Ready]) -> list[Ready]:
    for (_, resource), (_, prepared) in zip(chunk, ready):
        if isinstance(prepared, Prepared) and prepared.resource is None:
            prepared.resource = resource
    return ready


# -- worker processes ----------------------------------------------------------------------------------
_worker: Any = None  # in a worker process: the FHIRServer it prepares with
_fingerprints: dict[int, tuple[int, str]] = {}  # id(registry) -> (its version, fingerprint)


def registry_fingerprint(registry) -> str:
    """What the index entries depend on in a search parameter registry (every parameter's type, expression,
    components), comparable across processes; computed once per registry version."""
    cached = _fingerprints.get(id(registry))
    if cached is not None and cached[0] == registry.version:
        return cached[1]
    version = registry.version
    digest = hashlib.sha256()
    for rtype in registry.resource_types:
        for code, param in sorted(registry.for_type(rtype).items()):
            digest.update(repr((rtype, code, param.type, param.url, param.expression, param.targets,
                                param.components)).encode())
    _fingerprints[id(registry)] = (version, digest.hexdigest())
    return digest.hexdigest()


def _start_worker(make_server: Callable[[], Any]) -> None:
    global _worker
    # a worker forked from a server process inherits its signal handlers (the HTTP server's may only set a
    # flag): back to the defaults, so that the pool's terminate() ends it; interrupts are the parent's to handle
    for name in ("SIGTERM", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGABRT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICE)
    _worker = make_server()


def _prepare_in_worker(prepare: Callable[[ResourceService, list], list], chunk: list,
                       refresh: bool) -> tuple[str, list]:
    if refresh:
        _worker.search_parameters.refresh(force=True)  # custom SearchParameters the main process committed
    ready = prepare(_worker.resources, chunk)
    return registry_fingerprint(_worker.resources.indexer.registry), ready


class PrepareAhead:
    """The first write step of chunks, in input order: inline, or in forked worker processes ahead of the
    writes (at most ``ahead`` chunks per worker in flight, so memory stays flat on any input size).

    ``prepare(resources, chunk)`` (a module-level function: it is sent to the workers by name) returns
    the chunk's entries, each a tuple whose last element may be a :class:`Prepared`. ``worker_server``
    returns, in a worker (forked: it may close over the parent's objects), the server to prepare with;
    with ``refresh`` the worker first reloads the custom SearchParameters from the store (a server with
    its own store connection), without it the worker keeps the ones it was forked with. A chunk for which
    ``inline(chunk)`` is true (nothing worth sending) is prepared here; workers run ``in_worker`` when given
    (same entries as ``prepare``, possibly leaner, completed by the caller). Either way a chunk
    indexed with other search parameters than this process has when it collects it is prepared again
    here, and the Prepared of a collected chunk are marked current for this process's registry.
    """

    def __init__(self, resources: ResourceService, prepare: Callable[[ResourceService, list], list], *,
                 workers: int = 0, worker_server: Callable[[], Any] | None = None, refresh: bool = True,
                 ahead: int = 2, inline: Callable[[list], bool] | None = None,
                 in_worker: Callable[[ResourceService, list], list] | None = None, timeout: float | None = None):
        if workers and worker_server is None:
            raise ValueError("worker processes need worker_server")
        self.resources = resources
        self.prepare = prepare
        self.workers = workers
        self.worker_server = worker_server
        self.refresh = refresh
        self.ahead = ahead
        self.inline = inline
        self.in_worker = in_worker or prepare  # what workers run instead of ``prepare`` (e.g. a leaner answer)
        self.timeout = timeout  # seconds to wait for a chunk from a worker before preparing it here

    def run(self, todo: Iterable[tuple[Any, list]]) -> Iterator[tuple[Any, list]]:
        """(key, prepared entries) for each (key, chunk) of ``todo``, in order."""
        if not self.workers:
            for key, chunk in todo:
                yield key, self.prepare(self.resources, chunk)
            return
        context = multiprocessing.get_context("fork")
        with context.Pool(self.workers, initializer=_start_worker, initargs=(self.worker_server,)) as pool:
            pending: deque = deque()
            for key, chunk in todo:
                if self.inline is not None and self.inline(chunk):
                    pending.append((key, chunk, None))
                else:
                    pending.append((key, chunk, pool.apply_async(_prepare_in_worker,
                                                                 (self.in_worker, chunk, self.refresh))))
                if len(pending) >= self.ahead * self.workers:
                    yield self._collected(pending.popleft())
            while pending:
                yield self._collected(pending.popleft())

    def _collected(self, job: tuple) -> tuple[Any, list]:
        key, chunk, result = job
        if result is None:
            return key, self.prepare(self.resources, chunk)
        try:
            fingerprint, ready = result.get(self.timeout)
        except multiprocessing.TimeoutError:
            log.warning("a worker did not prepare its chunk within %s s: prepared in this process", self.timeout)
            return key, self.prepare(self.resources, chunk)
        registry = self.resources.indexer.registry
        current = registry.version
        if fingerprint != registry_fingerprint(registry):
            # the worker indexed with other search parameters than this process has now (e.g. a
            # SearchParameter this load wrote was committed after the chunk went out): prepared again here
            return key, self.prepare(self.resources, chunk)
        for entry in ready:  # indexed with every parameter this process knows: current here
            if isinstance(entry[-1], Prepared):
                entry[-1].registry_version = current
        return key, ready


class Loader:
    """Loads items through the write path; see the module docstring.

    ``workers`` > 0 prepares in that many processes, each with its own server built once by
    ``worker_server`` (a callable returning a :class:`fhir_server.app.FHIRServer` on the same store;
    processes are forked, so it is not pickled and may close over the parent's Engine).
    """

    def __init__(self, resources: ResourceService, principal: Principal, *, workers: int = 0,
                 worker_server: Callable[[], Any] | None = None):
        if workers and worker_server is None:
            raise ValueError("worker processes need worker_server")
        self.resources = resources
        self.principal = principal
        self.workers = workers
        self.worker_server = worker_server

    def load(self, items: Iterable[Item], *, chunk_size: int = 500, state: LoadState | None = None,
             progress: Callable[[LoadReport], None] = lambda report: None) -> LoadReport:
        report = LoadReport()
        start = state.done() if state else 0
        with self.resources.store.bulk_writes():
            for position, ready in self._prepared(items, chunk_size, start, report):
                self._write_chunk(ready, report)
                if state:
                    state.save(position)
                progress(report)
        if state:
            state.clear()
        return report

    def _todo(self, items: Iterable[Item], chunk_size: int, start: int,
              report: LoadReport) -> Iterator[tuple[int, list[Item]]]:
        """(position after the chunk, what of it is left to load), skipping what an earlier run loaded."""
        position = 0
        for chunk in chunks(items, chunk_size):
            if position + len(chunk) <= start:
                position += len(chunk)
                report.skipped += len(chunk)
                continue
            todo = chunk[max(0, start - position):]
            report.skipped += len(chunk) - len(todo)
            position += len(chunk)
            yield position, todo

    def _prepared(self, items: Iterable[Item], chunk_size: int, start: int,
                  report: LoadReport) -> Iterator[tuple[int, list[Ready]]]:
        """Chunks after the first write step, in input order (:class:`PrepareAhead`)."""
        ahead = PrepareAhead(self.resources, prepare_chunk, workers=self.workers, worker_server=self.worker_server,
                             in_worker=_worker_prepare_chunk)
        todo = (((position, chunk), chunk) for position, chunk in self._todo(items, chunk_size, start, report))
        with closing(ahead.run(todo)) as prepared:  # stopped early: the workers end at once
            for (position, chunk), ready in prepared:
                yield position, _reattached(chunk, ready)

    def _write_chunk(self, chunk: list[Ready], report: LoadReport) -> None:
        """Write the chunk in one transaction; if any resource fails, write them one by one so that
        only the bad ones are rejected."""
        valid = []
        for where, prepared in chunk:
            if isinstance(prepared, Prepared):
                valid.append((where, prepared))
            else:
                report.rejected.append((where, prepared))
        if not valid:
            return
        try:
            self.resources.atomic(lambda tx: self._write_all(tx, [prepared for _, prepared in valid]), what="load")
            report.loaded += len(valid)
        except FHIRError:
            for where, prepared in valid:  # one of them clashes: fall back to one transaction each
                try:
                    self.resources.atomic(lambda tx: self._write(tx, prepared), what=where)
                    report.loaded += 1
                except FHIRError as exc:
                    report.rejected.append((where, describe(exc)))

    def _write_all(self, tx, chunk: list[Prepared]) -> None:
        tx.current_many([(prepared.rtype, prepared.rid) for prepared in chunk])  # every lookup of the chunk at once
        write = self._write
        for prepared in chunk:
            write(tx, prepared)

    def _write(self, tx, prepared: Prepared) -> None:
        """The second write step. Append-only types (no update interaction, e.g. AuditEvent) are created
        under their id once; loading them again leaves the stored one untouched."""
        rtype, resource = prepared.rtype, prepared.resource
        if prepared.interaction == "update":
            self.resources.update_in(tx, self.principal, rtype, prepared.rid, resource, prepared=prepared)
        elif not resource.get("id"):
            self.resources.create_in(tx, self.principal, rtype, resource, prepared=prepared)
        elif tx.current(rtype, prepared.rid) is None:
            self.resources.create_in(tx, self.principal, rtype, resource, rid=prepared.rid, prepared=prepared)


def describe(error: FHIRError) -> str:
    return "; ".join(f"{issue.expression or ''} {issue.diagnostics}".strip() for issue in error.issues)
