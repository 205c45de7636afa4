"""Bulk ingestion (``$import``): NDJSON written through validation and the access gate, in a background job.

The protocol follows the Bulk Data *import* proposals (the asynchronous request pattern of
``$export``, run the other way round):

* kick-off: ``POST [base]/$import`` with either

  - the NDJSON itself (``Content-Type: application/fhir+ndjson``, one resource per line; large
    bodies are streamed to disk, up to :data:`MAX_UPLOAD_BYTES`), or
  - a ``Parameters`` resource whose ``input`` parameters name files **on this server**
    (``part`` ``url``: an ``$export-file`` URL of one of the caller's own finished exports;
    ``part`` ``type`` optional). This server fetches nothing from elsewhere.

  → ``202 Accepted``, ``Content-Location: [base]/$import-status/[job]``;
* status: ``GET [base]/$import-status/[job]`` → ``202`` with ``X-Progress`` (lines read, stored,
  refused) while queued or running; ``200`` with the manifest when done: ``output`` (per input,
  an NDJSON OperationOutcome summing up what was created, updated or left unchanged) and
  ``error`` (per input with refused lines, an NDJSON file of one OperationOutcome per refused
  line, whose issues name the line: ``line 17: ...``, expression ``line[17]`` followed by the
  element paths of the validation issues); ``DELETE`` cancels. Files are downloaded with
  ``GET [base]/$export-file/[job]/[name]``, the same retention as exports.

The job is a :class:`~fhir_server.bulk.jobs.Job` of kind ``import`` in the export job store, run
by the same worker (one thread per process, leases, restart after a crash) through
:class:`Dispatcher`. It runs **as the principal of the kick-off**: each line is one write of the
:class:`ResourceService`, so it passes base and profile validation, the care item checks and the
gate (a token without ``system/ExplanationOfBenefit.cu`` gets every line refused with 403). A
line is written as

* an ExplanationOfBenefit: a conditional update on the insurer identifier
  (``identifier=https://dmp.example.org/fhir/sid/insurer-care-item|<value>``): re-importing the
  same item changes nothing (no new version), a corrected item becomes a new version; an item
  without that identifier is refused (it could not be re-sent idempotently);
* any other resource with an ``id``: an update (create-on-update); without ``id``: a create.

Lines are written :data:`CHUNK` at a time in one store transaction; when any line of a chunk is
refused, the chunk is rolled back and its lines are written one by one, so a refused line costs
only itself. A restarted job starts over from the first line: every write is idempotent.

The first write step of each line (:meth:`ResourceService.prepare`: base and profile validation,
index entries; most of the CPU) runs ahead of the writes, in forked worker processes for inputs of
at least :attr:`Importer.parallel_from` bytes (:class:`fhir_server.services.loader.PrepareAhead`, the
machinery of ``fhir-server load``); the job's thread writes each chunk, in line order, with
``create_in``/``update_in`` and their gate checks for the kick-off principal. Two things stay in the
write: the care item's patient lookup (:func:`fhir_server.carehistory.feed.unknown_patient_in`, so a
Patient imported earlier in the same file counts) and the conditional match on the insurer identifier
(so an identifier twice in one file is created once, then updated). Before a chunk goes out, one
query finds the stored items of its insurer identifiers: a line identical to its stored item is not
validated again (the everyday re-feed), and is checked as such in the write.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote, urlparse


from fhir_server.access.gate import Principal
from fhir_server.bulk.export import NDJSON, principal_from_dict, principal_to_dict
from fhir_server.bulk.jobs import COMPLETED, Job
from fhir_server.carehistory import EOB, INSURER_SYSTEM
from fhir_server.carehistory.feed import deferred, unknown_patient_in
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError, Issue, operation_outcome
from fhir_server.search.query import Clause, Query, TokenValue
from fhir_server.services.loader import PrepareAhead
from fhir_server.services.resources import Prepared, ResourceService, WriteResult

log = logging.getLogger("fhir_server.bulk.imports")

KIND = "import"
CHUNK = 200  # lines per store transaction
MAX_UPLOAD_BYTES = int(os.environ.get("FHIR_SERVER_IMPORT_MAX_BYTES", 8 * 1024 ** 3))
NDJSON_TYPES = {"application/fhir+ndjson", "application/ndjson", "application/x-ndjson"}
INPUT_DIR = "import-input"  # under the bulk directory: uploads, kept until their job ends
_EXPORT_FILE = re.compile(r"/\$export-file/([0-9a-f]{32})/([^/]+)$")
WORKERS = int(os.environ.get("FHIR_SERVER_IMPORT_WORKERS", os.cpu_count() or 1))  # 0: prepared in the job's thread
PARALLEL_FROM = int(os.environ.get("FHIR_SERVER_IMPORT_PARALLEL_FROM", 1 << 20))  # bytes of input
WORKER_TIMEOUT = 300.0  # s: a chunk a worker has not prepared by then is prepared in the job's thread
INLINE_TYPES = frozenset({"Subscription", "SearchParameter"})  # validation with side effects: in the write

# A line on its way to the write: (line number, kind, payload). Kinds: "early" (refused before any
# lookup: payload (status, issues)), "same" (identical to its stored item: payload the resource),
# "inline" (prepared in the write: the resource), "prepare" (to prepare: the resource), then, once
# prepared, "ready" (payload a Prepared) or "refused" (payload (status, issues, resource)).
Entry = tuple[int, str, Any]


# -- the worker side ------------------------------------------------------------------------------
class Dispatcher:
    """What the bulk worker runs a job with: import jobs here, every other kind by the exporter."""

    def __init__(self, exporter: Any, importer: "Importer"):
        self.exporter = exporter
        self.importer = importer

    def run(self, job: Job, directory: Path, control: Any) -> dict:
        if job.kind == KIND:
            return self.importer.run(job, directory, control)
        return self.exporter.run(job, directory, control)

    def __getattr__(self, name: str) -> Any:
        if name in ("exporter", "importer"):
            raise AttributeError(name)
        return getattr(self.exporter, name)


class BulkImports:
    """The import side of ``FHIRServer.bulk``: installs the dispatcher on its worker."""

    def __init__(self, server: Any):
        self.server = server
        self.importer = Importer(server)
        self.install()

    def install(self) -> None:
        """Make the server's bulk worker run import jobs (call again after replacing ``server.bulk``)."""
        worker = getattr(self.server.bulk, "worker", None)
        if worker is not None and not isinstance(worker.exporter, Dispatcher):
            worker.exporter = Dispatcher(worker.exporter, self.importer)

    def input_dir(self) -> Path:
        return Path(self.server.bulk.settings.directory) / INPUT_DIR


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number from 1, bytes read so far, line) for the non-blank lines of an NDJSON file."""
    with open(path, "rb") as handle:
        position = 0
        for number, line in enumerate(handle, 1):
            position += len(line)
            if line.strip():
                yield number, position, line


class Importer:
    """Runs import jobs: each input file, line by line, through the resource service."""

    def __init__(self, server: Any, chunk: int = CHUNK, workers: int = WORKERS, parallel_from: int = PARALLEL_FROM):
        self.server = server
        self.chunk = chunk
        self.workers = workers  # processes preparing ahead of the writes (0: in the job's thread)
        self.parallel_from = parallel_from  # smaller inputs are prepared in the job's thread (no fork)
        # the versions this thread's import wrote (committed), told by the server's write listeners: what
        # tells an update from an identical re-send, which writes nothing
        self._local = threading.local()
        server.add_write_listener(self._written)

    def _written(self, stored: Any) -> None:
        written = getattr(self._local, "written", None)
        if written is not None:
            written.add((stored.type, stored.id, stored.version))

    def run(self, job: Job, directory: Path, control: Any) -> dict:
        principal = principal_from_dict(job.principal)
        result: dict[str, Any] = {"output": [], "error": [], "inputs": []}
        self._local.written = set()
        try:
            for number, source in enumerate(job.spec["inputs"], 1):
                counts = self._run_input(principal, source, number, directory, control, result)
                result["inputs"].append(dict(counts, inputUrl=source["url"]))
        finally:
            self._local.written = None
        self._remove_uploads(job)
        return result

    def _run_input(self, principal: Principal, source: dict, number: int, directory: Path, control: Any,
                   result: dict) -> dict:
        path = Path(source["path"])
        if not path.is_file():
            raise FHIRError.of(404, "not-found", f"The input {source['url']} is no longer available")
        size = max(path.stat().st_size, 1)
        counts = {"lines": 0, "created": 0, "updated": 0, "unchanged": 0, "refused": 0}
        errors_name = f"{number}.errors.ndjson"
        errors = open(directory / errors_name, "wb")
        workers = self.workers if size >= self.parallel_from else 0
        ahead = PrepareAhead(self.server.resources, _prepare_entries, workers=workers,
                             worker_server=self._worker_server, refresh=False,
                             inline=lambda entries: not any(kind == "prepare" for _, kind, _ in entries),
                             in_worker=_worker_prepare, timeout=WORKER_TIMEOUT)
        bulk = self.server.store.bulk_writes() if workers else nullcontext()  # a large input: bigger caches
        try:
            chunks = ahead.run(self._chunks(path, counts, source.get("type")))
            with bulk, closing(chunks):  # a cancelled job stops the workers at once
                for (position, sent, hints), entries in chunks:
                    self._write_batch(principal, _reattached(entries, sent), errors, counts, hints)
                    control.page_done(self._progress(number, counts, position, size))
        finally:
            errors.close()
        if counts["refused"]:
            result["error"].append({"type": "OperationOutcome", "file": errors_name, "count": counts["refused"],
                                    "inputUrl": source["url"]})
        else:
            (directory / errors_name).unlink()
        summary = f"{number}.outcome.ndjson"
        stored = counts["created"] + counts["updated"] + counts["unchanged"]
        text = (f"{source['url']}: {counts['lines']} lines, {counts['created']} created, {counts['updated']} "
                f"updated, {counts['unchanged']} unchanged (identical to the stored version), {counts['refused']} "
                "refused")
        (directory / summary).write_bytes(jsonio.dumps(operation_outcome(
            [Issue("information", "informational", text)])) + b"\n")
        result["output"].append({"type": "OperationOutcome", "file": summary, "count": stored,
                                 "inputUrl": source["url"]})
        return counts

    def _worker_server(self) -> Any:
        """In a forked worker: this server as it was at the fork (engine, registry, validators); it prepares
        with no store access (the patient lookup is deferred, Subscriptions and SearchParameters are inline).
        The locks of its objects are renewed: another thread of the serving process may have held one at the
        fork, and no thread of this process would ever release it."""
        _renew_locks(self.server)
        return self.server

    def _chunks(self, path: Path, counts: dict, expected_type: str | None
                ) -> Iterator[tuple[tuple[int, list[Entry]], list[Entry]]]:
        """((bytes read after the chunk, its entries), its entries) for the chunks of an input file, in order.
        The entries go to the worker processes as their lines (:class:`_Lines`)."""
        batch: list[Entry] = []
        lines: list[bytes] = []
        position = 0
        for line_number, position, line in _lines(path):
            counts["lines"] += 1
            batch.append(self._entry(line_number, line, expected_type))
            lines.append(line)
            if len(batch) >= self.chunk:
                hints = Hints()
                batch = self._recognise_same(batch, hints)
                yield (position, batch, hints), _Lines(batch, lines)
                batch, lines = [], []
        if batch:
            hints = Hints()
            batch = self._recognise_same(batch, hints)
            yield (position, batch, hints), _Lines(batch, lines)

    def _entry(self, line_number: int, line: bytes, expected_type: str | None) -> Entry:
        """The checks of a line that need neither validation nor the store."""
        try:
            resource = jsonio.loads(line)
        except jsonio.JSONError as exc:
            return line_number, "early", (400, [Issue("error", "structure", f"not valid JSON: {exc}")])
        try:
            rtype = _checked_type(self.server, resource, expected_type)
        except FHIRError as exc:
            return line_number, "early", (exc.status, exc.issues)
        return line_number, "inline" if rtype in INLINE_TYPES else "prepare", resource

    def _recognise_same(self, batch: list[Entry], hints: "Hints") -> list[Entry]:
        """Mark "same" the care items identical to their stored item (one query for the chunk); the write
        checks it again in its transaction (the same version still current), and prepares there a line that is
        not the same any more. ``hints`` keeps what was seen for the write."""
        wanted: dict[str, list[int]] = {}
        for index, (_, kind, resource) in enumerate(batch):
            if kind == "prepare" and resource["resourceType"] == EOB:
                wanted.setdefault(_insurer_value(resource), []).append(index)
        if not wanted:
            return batch
        resources = self.server.resources
        try:
            page = self.server.store.search(identifier_query(resources.parser, wanted), count=2 * len(wanted) + 1)
        except FHIRError:
            return batch
        stored: dict[str, list[Any]] = {}
        for current in page.resources:
            values = _insurer_values(jsonio.loads(current.body))
            hints.known[current.id] = (current.version, values)
            for value in values & wanted.keys():
                stored.setdefault(value, []).append(current)
        out = list(batch)
        for value, indexes in wanted.items():
            found = stored.get(value) or []
            if len(found) != 1 or found[0].deleted:
                continue
            current = found[0]
            for index in indexes:
                line_number, _, resource = batch[index]
                if resource.get("id") in (None, current.id) and \
                        resources._unchanged(current, dict(resource, id=current.id)):
                    out[index] = (line_number, "same", resource)
                    hints.same[line_number] = (current.id, current.version)
        return out

    @staticmethod
    def _progress(number: int, counts: dict, position: int, size: int) -> str:
        return (f"input {number}: {min(100, position * 100 // size)}% read, {counts['lines']} lines, "
                f"{counts['created'] + counts['updated'] + counts['unchanged']} stored, {counts['refused']} refused")

    # -- writes ---------------------------------------------------------------------------------
    def _write_batch(self, principal: Principal, entries: list[Entry], errors: Any, counts: dict,
                     hints: "Hints | None" = None) -> None:
        """One transaction for the chunk; when a line is refused, each line in its own transaction. The
        chunk's refused lines are reported in line order."""
        resources = self.server.resources
        refused: list[tuple[int, list[Issue], int]] = []
        todo = []
        for entry in entries:
            if entry[1] == "early":
                refused.append((entry[0], entry[2][1], entry[2][0]))
            else:
                todo.append(entry)
        results = None
        if todo:
            try:
                results = resources.atomic(lambda tx: self._write_entries(tx, principal, todo, hints),
                                           what="A resource of this import")
            except Exception:
                results = None
        if results is not None:
            for result in results:
                self._count(counts, result)
            todo = []
        for entry in todo:
            line_number = entry[0]
            try:
                result = resources.atomic(lambda tx: self._write_entry(tx, principal, entry, None, hints),
                                          what=f"Line {line_number}")
            except FHIRError as exc:
                refused.append((line_number, exc.issues, exc.status))
                continue
            except Exception:
                log.exception("import: line %d failed unexpectedly", line_number)
                refused.append((line_number, [Issue("error", "exception", "internal error; it has been logged")],
                                500))
                continue
            self._count(counts, result)
        for line_number, issues, status in sorted(refused, key=lambda r: r[0]):
            self._refuse(errors, counts, line_number, issues, status)

    def _write_entries(self, tx: Any, principal: Principal, entries: list[Entry], hints: "Hints | None") -> list[Any]:
        matches = ChunkMatches(self.server, tx, principal, entries, hints)
        tx.current_many(_looked_up(entries))  # read at once what the lines' writes look up one by one
        write = self._write_entry
        return [write(tx, principal, entry, matches, hints) for entry in entries]

    def _write_entry(self, tx: Any, principal: Principal, entry: Entry, chunk: "ChunkMatches | None" = None,
                     hints: "Hints | None" = None) -> Any:
        """The write of one prepared line: what ``_write`` does, with the validation and indexing done ahead."""
        line_number, kind, payload = entry
        if kind in ("same", "inline", "prepare"):  # not prepared (or to check again as the stored item)
            seen = hints.same.get(line_number) if hints is not None and kind == "same" else None
            return self._write(tx, principal, payload, chunk, seen)
        if kind == "early":
            raise FHIRError(payload[0], payload[1])
        if kind == "refused":
            prepared, failure, resource = None, (payload[0], payload[1]), payload[2]
        else:
            prepared, failure, resource = payload, None, payload.resource
        resources = self.server.resources
        rtype = resource["resourceType"]
        if rtype != EOB:
            if failure is not None:
                raise FHIRError(*failure)
            if prepared.interaction == "update":
                return resources.update_in(tx, principal, rtype, prepared.rid, resource, prepared=prepared)
            return resources.create_in(tx, principal, rtype, resource, prepared=prepared)
        value, matches, unchanged = self._match(tx, principal, resource, chunk)
        if unchanged is not None:
            return unchanged
        if len(matches) == 1 and resource.get("id") in (None, matches[0][1]):
            rid = matches[0][1]
            body = dict(resource, id=rid)
            self._checked(tx, resource, failure, chunk)
            as_update = Prepared("update", rtype, rid, body, prepared.issues, prepared.index,
                                 prepared.registry_version)
            return resources.update_in(tx, principal, rtype, rid, body, prepared=as_update)
        if not matches and not resource.get("id"):
            self._checked(tx, resource, failure, chunk)
            return resources.create_in(tx, principal, rtype, resource, prepared=prepared)
        # several matches, or an id of its own: the service's conditional update, prepared in the transaction
        return resources.conditional_update_in(tx, principal, rtype, _criteria([value]), resource)

    def _match(self, tx: Any, principal: Principal, resource: dict, chunk: "ChunkMatches | None",
               seen: tuple[str, int] | None = None) -> tuple[str, list, WriteResult | None]:
        """A care item's conditional match on the insurer identifier: (its identifier, matches, the stored version
        when the item is identical to its single match — the re-feed, nothing to write — else None)."""
        value = _insurer_value(resource)
        if chunk is not None:
            matches = chunk.matches(value)
            chunk.written(value, resource)
        else:
            matches = identifier_matches(self.server.resources, tx, principal, [value])
        unchanged = None
        if len(matches) == 1 and resource.get("id") in (None, matches[0][1]):
            unchanged = self._unchanged(tx, principal, EOB, matches[0][1], dict(resource, id=matches[0][1]), seen)
        return value, matches, unchanged

    @staticmethod
    def _checked(tx: Any, resource: dict, failure: tuple[int, list[Issue]] | None,
                 chunk: "ChunkMatches | None" = None) -> None:
        """Raise what the validation would have raised for this care item, in the service's order: base
        errors (400), then the unknown patient (looked up in ``tx``), then the profiles' errors (422).
        A patient reference found in the chunk's transaction is not looked up again: an import deletes nothing."""
        if failure is not None and failure[0] == 400:
            raise FHIRError(*failure)
        patient = resource.get("patient") if chunk is not None else None
        reference = patient.get("reference") if isinstance(patient, dict) else None
        if not isinstance(reference, str) or reference not in chunk.patients:
            problem = unknown_patient_in(tx, resource)
            if problem is not None:
                raise FHIRError(400, [problem])
            if isinstance(reference, str):
                chunk.patients.add(reference)
        if failure is not None:
            raise FHIRError(*failure)

    def _unchanged(self, tx: Any, principal: Principal, rtype: str, rid: str, body: dict,
                   seen: tuple[str, int] | None = None) -> WriteResult | None:
        """The everyday re-feed: an item identical to the stored one (the stored version passed the checks) is
        recognised without validating it again; nothing is written, as the service would. ``seen``: the
        version this body was found identical to before the transaction (no second comparison if current)."""
        resources = self.server.resources
        current = tx.current(rtype, rid)
        if current is not None and not current.deleted and (
                seen == (rid, current.version) or resources._unchanged(current, body)):
            self.server.gate.authorize(principal, "update", rtype, body)
            if resources.visible(principal, "update", rtype, rid, tx):
                return WriteResult(current, False, [])
        return None

    def _write(self, tx: Any, principal: Principal, resource: Any, chunk: "ChunkMatches | None" = None,
               seen: tuple[str, int] | None = None) -> Any:
        """One line written with the service's own preparation in the transaction (lines not prepared ahead)."""
        resources = self.server.resources
        rtype = resource["resourceType"]
        if rtype == EOB:
            value, matches, unchanged = self._match(tx, principal, resource, chunk, seen)
            if unchanged is not None:
                return unchanged
            if len(matches) == 1 and resource.get("id") in (None, matches[0][1]):
                return resources.update_in(tx, principal, rtype, matches[0][1], dict(resource, id=matches[0][1]))
            return resources.conditional_update_in(tx, principal, rtype, _criteria([value]), resource)
        if resource.get("id"):
            return resources.update_in(tx, principal, rtype, resource["id"], resource)
        return resources.create_in(tx, principal, rtype, resource)

    def _count(self, counts: dict, result: Any) -> None:
        stored = result.resource
        key = (stored.type, stored.id, stored.version)
        if result.created:
            self._local.written.discard(key)
            counts["created"] += 1
        elif key in self._local.written:
            # the line that wrote this version; a later line answered with it (the same content again) wrote nothing
            self._local.written.discard(key)
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1

    @staticmethod
    def _refuse(errors: Any, counts: dict, line_number: int, issues: list[Issue], status: int = 400) -> None:
        counts["refused"] += 1
        located = [Issue(i.severity, i.code, f"line {line_number} ({status}): {i.diagnostics}",
                         f"line[{line_number}]" + (f".{i.expression}" if i.expression else ""))
                   for i in issues if i.severity in ("error", "fatal")] or [
            Issue("error", "processing", f"line {line_number}: refused", f"line[{line_number}]")]
        errors.write(jsonio.dumps(operation_outcome(located)) + b"\n")

    @staticmethod
    def _remove_uploads(job: Job) -> None:
        for source in job.spec["inputs"]:
            if source.get("upload"):
                try:
                    os.unlink(source["path"])
                except OSError:
                    pass


@dataclass
class Hints:
    """What a chunk's lookup before its transaction saw (:meth:`Importer._recognise_same`), for its write:
    ``known`` id -> (version, insurer identifiers) of the stored items found, ``same`` line -> (id, version)
    of the item the line was found identical to. Used only when that version is still the current one."""

    known: dict[str, tuple[int, set[str]]] = field(default_factory=dict)
    same: dict[int, tuple[str, int]] = field(default_factory=dict)


class ChunkMatches:
    """The conditional matches of a chunk's care items in its transaction, by one query for all their insurer
    identifiers (the service's ``matches``: the principal's ``update`` constraints from the gate, in ``tx``)
    instead of one per line. Once a line of the chunk has written an item, the identifiers that item carried
    (before and after) are matched line by line again with the service's ``matches``, so an identifier twice
    in one chunk sees the item its first line created or changed."""

    def __init__(self, server: Any, tx: Any, principal: Principal, entries: list[Entry], hints: "Hints | None" = None):
        self.resources = server.resources
        self.tx = tx
        self.principal = principal
        self.found: dict[str, list[str]] = {}  # insurer identifier -> ids of the items it matches
        self.values: dict[str, set[str]] = {}  # id -> its insurer identifiers
        self.dirty: set[str] = set()  # identifiers to match line by line (an item carrying them was written)
        self.patients: set[str] = set()  # patient references found in the transaction
        wanted = {_insurer_value(_resource_of(entry)) for entry in entries if entry[1] != "early"
                  and _resource_of(entry)["resourceType"] == EOB}
        wanted.discard(None)
        if not wanted:
            return
        known = hints.known if hints is not None else {}
        found = identifier_matches(self.resources, tx, principal, sorted(wanted))
        stored = tx.current_many([(EOB, rid) for _, rid in found])
        for _, rid in found:
            current = stored[(EOB, rid)]
            if current is None or current.deleted:
                held: set[str] = set()
            elif rid in known and known[rid][0] == current.version:  # as read before the transaction
                held = known[rid][1]
            else:
                held = _insurer_values(jsonio.loads(current.body))
            self.values[rid] = held
            for value in held & wanted:
                self.found.setdefault(value, []).append(rid)

    def matches(self, value: str) -> list[tuple[str, str]]:
        if value in self.dirty:
            return identifier_matches(self.resources, self.tx, self.principal, [value])
        return [(EOB, rid) for rid in self.found.get(value, ())]

    def written(self, value: str, resource: dict) -> None:
        """A line with this identifier is being written: the identifiers of what it may change (the body it
        writes, the items it matched) are matched line by line from now on."""
        self.dirty.add(value)
        self.dirty |= _insurer_values(resource)
        for rid in self.found.get(value, ()):
            self.dirty |= self.values.get(rid, set())


def _insurer_values(resource: dict) -> set[str]:
    values = set()
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, dict) and identifier.get("system") == INSURER_SYSTEM:
            value = identifier.get("value")
            if isinstance(value, str):
                values.add(value)
    return values


def _looked_up(entries: list[Entry]) -> list[tuple[str, str]]:
    """What the writes of prepared lines read by id: the resource itself (its current version, or that it does not
    exist yet), a care item's patient (``Patient/[id]`` references)."""
    keys: list[tuple[str, str]] = []
    for _, kind, payload in entries:
        if kind != "ready":
            continue
        keys.append((payload.rtype, payload.rid))
        if payload.rtype == EOB:
            reference = (payload.resource.get("patient") or {}).get("reference")
            if isinstance(reference, str) and reference.startswith("Patient/") and reference.count("/") == 1:
                keys.append(("Patient", reference[8:]))
    return list(dict.fromkeys(keys))


def _resource_of(entry: Entry) -> dict:
    kind, payload = entry[1], entry[2]
    return payload.resource if kind == "ready" else payload[2] if kind == "refused" else payload


def _checked_type(server: Any, resource: Any, expected_type: str | None) -> str:
    """The line's resource type, after the checks made before any lookup (raises what refuses the line)."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise FHIRError.of(400, "structure", "a line must hold one FHIR resource (a JSON object with a "
                           "resourceType)")
    rtype = resource["resourceType"]
    if expected_type and rtype != expected_type:
        raise FHIRError.of(400, "invalid", f"this input is declared as {expected_type}, not {rtype}")
    if not server.definitions.is_served(rtype):
        raise FHIRError.of(404, "not-supported", f"Resource type '{rtype}' is not served here")
    if rtype == EOB and not _insurer_value(resource):
        raise FHIRError.of(400, "required", f"a care item needs the insurer's identifier ({INSURER_SYSTEM})"
                           " to be imported idempotently", f"{EOB}.identifier")
    return rtype


def _insurer_value(resource: dict) -> str | None:
    """The value of the first insurer identifier, when it is a non-empty string."""
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, dict) and identifier.get("system") == INSURER_SYSTEM:
            value = identifier.get("value")
            return value if isinstance(value, str) and value else None
    return None


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def _renew_locks(root: Any, depth: int = 6) -> int:
    """Replace every ``threading`` lock held in an attribute of ``root`` or of the objects its attributes
    reach (``depth`` levels, plain objects only, no containers, not ``threading``'s own objects) by a new one;
    in a single-threaded forked child only. Returns how many were renewed."""
    seen: set[int] = set()
    renewed = 0
    level = [root]
    for _ in range(depth):
        following = []
        for obj in level:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            attributes = getattr(obj, "__dict__", None)
            if not isinstance(attributes, dict):
                continue
            for name, value in list(attributes.items()):
                if isinstance(value, _LOCK_TYPES):
                    attributes[name] = threading.RLock() if isinstance(value, _LOCK_TYPES[1]) else threading.Lock()
                    renewed += 1
                elif hasattr(value, "__dict__") and not isinstance(value, (type, type(os))) \
                        and not callable(value) and type(value).__module__ != "threading":
                    following.append(value)  # not into Conditions and Events: they bind their lock's methods
        level = following
    return renewed


class _Lines(list):
    """A chunk's entries, sent to a worker process as the lines to prepare (bytes: nothing to pickle, the worker
    parses them) rather than as parsed resources; the entries the worker answers without a payload (see
    :func:`_worker_prepare`) go without theirs."""

    def __init__(self, entries: list[Entry], lines: list[bytes]):
        super().__init__(entries)
        self.lines = lines

    def __reduce__(self) -> tuple:
        return _parsed, ([(number, kind, line if kind == "prepare" else payload if kind == "early" else None)
                          for (number, kind, payload), line in zip(self, self.lines)],)


def _parsed(sent: list[Entry]) -> list[Entry]:
    """In a worker: the entries of a :class:`_Lines` (lines to prepare parsed again, as this process did)."""
    return [(number, kind, jsonio.loads(payload) if kind == "prepare" else payload) for number, kind, payload in sent]


def _reattached(ready: list[Entry], sent: list[Entry]) -> list[Entry]:
    """The prepared entries with the resources this process parsed (a worker sends none back: less to copy)."""
    out: list[Entry] = []
    for (line_number, kind, payload), (_, _, resource) in zip(ready, sent):
        if kind == "ready" and payload.resource is None:
            payload.resource = resource
        elif kind == "refused" and payload[2] is None:
            payload = (payload[0], payload[1], resource)
        elif kind in ("same", "inline", "prepare") and payload is None:
            payload = resource
        out.append((line_number, kind, payload))
    return out


def _worker_prepare(resources: ResourceService, entries: list[Entry]) -> list[Entry]:
    """:func:`_prepare_entries` in a worker process: the resources stay out of the answer, and so do the warnings
    of the lines ready to write (an import reports only what it refuses)."""
    out: list[Entry] = []
    for line_number, kind, payload in _prepare_entries(resources, entries):
        if kind == "ready":
            payload.lean()
        elif kind == "refused":
            payload = (payload[0], payload[1], None)
        elif kind != "early":
            payload = None
        out.append((line_number, kind, payload))
    return out


def _prepare_entries(resources: ResourceService, entries: list[Entry]) -> list[Entry]:
    """The first write step of a chunk's "prepare" lines (in a worker process, or inline), the patient lookup
    deferred to the write. A care item is prepared as a create: the write turns it into the update of the
    item its identifier matches (same checks; the index entries do not depend on the id)."""
    out: list[Entry] = []
    with deferred():
        for line_number, kind, resource in entries:
            if kind != "prepare":
                out.append((line_number, kind, resource))
                continue
            rtype = resource["resourceType"]
            try:
                if rtype == EOB:
                    resources.served(rtype, "update")
                    prepared = resources.prepare("create", rtype, resource)
                elif resource.get("id"):
                    prepared = resources.prepare("update", rtype, resource, resource["id"])
                else:
                    prepared = resources.prepare("create", rtype, resource)
            except FHIRError as exc:
                out.append((line_number, "refused", (exc.status, exc.issues, resource)))
                continue
            except Exception:  # an unexpected failure: the write prepares the line again and reports it
                log.exception("import: preparing line %d failed unexpectedly", line_number)
                out.append((line_number, "inline", resource))
                continue
            out.append((line_number, "ready", prepared))
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def _criteria(values: list[str]) -> str:
    """The conditional criteria matching the care items of these insurer identifiers: each value escaped for the
    search syntax (``, | $ \\``), then percent-encoded for the query string, so that ``+ % & ? #`` in an
    identifier stay themselves."""
    return "identifier=" + ",".join(quote(f"{INSURER_SYSTEM}|{_escape(v)}", safe=":/|,\\$") for v in values)


_templates: dict[int, tuple[Any, Any, Any]] = {}  # id(parser) -> (parser, registry version, identifier clause)


def identifier_query(parser: Any, values: Iterable[str]) -> Query:
    """``parser.criteria(EOB, _criteria(values))``, without parsing a clause of every value: the identifier
    clause is parsed once per search parameter registry, for one value, and given these values (the query is
    equal to the parsed one)."""
    values = list(values)
    version = parser.registry.version
    cached = _templates.get(id(parser))
    if cached is None or cached[0] is not parser or cached[1] != version:
        template = parser.criteria(EOB, _criteria(["x"]))
        clause = template.clauses[0] if len(template.clauses) == 1 else None
        if not (template.types == (EOB,) and not template.sort and isinstance(clause, Clause)
                and clause.values == (TokenValue(INSURER_SYSTEM, "x", True),)):
            clause = None
        _templates[id(parser)] = cached = (parser, version, clause)
    clause = cached[2]
    if clause is None or not values:
        return parser.criteria(EOB, _criteria(values))
    return Query(types=(EOB,), clauses=[replace(clause, values=tuple(TokenValue(INSURER_SYSTEM, value, True)
                                                                      for value in values))])


def identifier_matches(resources: ResourceService, tx: Any, principal: Principal,
                       values: Iterable[str]) -> list[tuple[str, str]]:
    """``resources.matches(tx, principal, EOB, _criteria(values), "update")``, with :func:`identifier_query`."""
    query = resources.gate.constrained(principal, identifier_query(resources.parser, values),
                                       resources.definitions.served, "update")
    return tx.search(query)


# -- the kick-off -----------------------------------------------------------------------------------
def may_write_something(server: Any, principal: Principal) -> None:
    """403 unless the principal may create or update at least one served type (what an import does)."""
    for rtype in sorted(server.definitions.served):
        for interaction in ("update", "create"):
            try:
                server.gate.authorize(principal, interaction, rtype, None)
                return
            except FHIRError:
                continue
    raise FHIRError.of(403, "forbidden", "This access token may not write any resource: nothing could be imported")


def plan_upload(imports: BulkImports, job_id: str, stream: Any) -> list[dict]:
    """Stream an uploaded NDJSON body to the job's input file."""
    folder = imports.input_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job_id}.ndjson"
    written = 0
    with open(path, "wb") as out:
        while True:
            block = stream.read(1 << 20)
            if not block:
                break
            written += len(block)
            out.write(block)
    if written == 0:
        path.unlink()
        raise FHIRError.of(400, "required", "The NDJSON body is empty")
    return [{"url": "upload", "path": str(path), "upload": True, "type": None}]


def plan_parameters(server: Any, principal: Principal, body: Any, base: str) -> list[dict]:
    """The inputs of a ``Parameters`` kick-off: ``$export-file`` URLs of the caller's own finished exports."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError.of(400, "invalid", "POST $import takes NDJSON (Content-Type: application/fhir+ndjson) or "
                           "a Parameters resource with input parameters")
    inputs: list[dict] = []
    for index, parameter in enumerate(body.get("parameter") or []):
        if not isinstance(parameter, dict) or parameter.get("name") != "input":
            continue
        parts = {p.get("name"): next((v for k, v in p.items() if k.startswith("value")), None)
                 for p in parameter.get("part") or [] if isinstance(p, dict)}
        url, rtype = parts.get("url"), parts.get("type")
        where = f"Parameters.parameter[{index}]"
        if not isinstance(url, str):
            raise FHIRError.of(400, "required", "an input needs a url part", where)
        if rtype is not None and not server.definitions.is_served(str(rtype)):
            raise FHIRError.of(400, "not-supported", f"Resource type '{rtype}' is not served here", where)
        inputs.append({"url": url, "path": str(_local_file(server, principal, url, base, where)),
                       "type": rtype, "upload": False})
    if not inputs:
        raise FHIRError.of(400, "required", "The Parameters name no input")
    return inputs


def _local_file(server: Any, principal: Principal, url: str, base: str, where: str) -> Path:
    match = _EXPORT_FILE.search(urlparse(url).path)
    if not url.startswith(base + "/") or match is None:
        raise FHIRError.of(400, "not-supported", f"{url} is not a file of this server: only the $export-file URLs "
                           "of your own exports can be imported by URL; upload other NDJSON directly "
                           "(Content-Type: application/fhir+ndjson)", where)
    job = server.bulk.jobs.get(match.group(1))
    name = match.group(2)
    result = (job.result or {}) if job is not None else {}
    if job is None or job.deleted or job.owner != principal.subject or job.state != COMPLETED \
            or name not in {f["file"] for f in result.get("output", [])}:
        raise FHIRError.of(404, "not-found", f"{url} is not a file of one of your finished exports", where)
    path = Path(server.bulk.settings.directory).resolve() / job.id / result["dir"] / name
    if not path.is_file():
        raise FHIRError.of(404, "not-found", f"{url} is no longer available", where)
    return path


def new_job(principal: Principal, request_url: str, inputs: list[dict], job_id: str) -> Job:
    return Job(job_id, KIND, request_url, {"inputs": inputs}, principal_to_dict(principal), principal.subject)


def manifest(job: Job, files_url: str, requires_token: bool) -> dict:
    result = job.result or {}
    return {
        "transactionTime": job.transaction_time,
        "request": job.request,
        "requiresAccessToken": requires_token,
        "output": [{"type": f["type"], "inputUrl": f["inputUrl"], "url": files_url + f["file"], "count": f["count"]}
                   for f in result.get("output", [])],
        "error": [{"type": f["type"], "inputUrl": f["inputUrl"], "url": files_url + f["file"], "count": f["count"]}
                  for f in result.get("error", [])],
    }


def new_job_id() -> str:
    return uuid.uuid4().hex


__all__ = ["BulkImports", "Dispatcher", "Importer", "KIND", "NDJSON", "manifest", "may_write_something",
           "new_job", "new_job_id", "plan_parameters", "plan_upload"]
