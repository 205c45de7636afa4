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
"""
from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse


from fhir_server.access.gate import Principal
from fhir_server.bulk.export import NDJSON, principal_from_dict, principal_to_dict
from fhir_server.bulk.jobs import COMPLETED, Job
from fhir_server.carehistory import EOB, INSURER_SYSTEM
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError, Issue, operation_outcome
from fhir_server.services.resources import WriteResult

log = logging.getLogger("fhir_server.bulk.imports")

KIND = "import"
CHUNK = 200  # lines per store transaction
MAX_UPLOAD_BYTES = int(os.environ.get("FHIR_SERVER_IMPORT_MAX_BYTES", 8 * 1024 ** 3))
NDJSON_TYPES = {"application/fhir+ndjson", "application/ndjson", "application/x-ndjson"}
INPUT_DIR = "import-input"  # under the bulk directory: uploads, kept until their job ends
_EXPORT_FILE = re.compile(r"/\$export-file/([0-9a-f]{32})/([^/]+)$")


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

    def __init__(self, server: Any, chunk: int = CHUNK):
        self.server = server
        self.chunk = chunk
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
        try:
            batch: list[tuple[int, Any]] = []
            position = 0
            for line_number, position, line in _lines(path):
                counts["lines"] += 1
                try:
                    resource = jsonio.loads(line)
                except jsonio.JSONError as exc:
                    self._refuse(errors, counts, line_number, [Issue("error", "structure",
                                                                     f"not valid JSON: {exc}")])
                    continue
                batch.append((line_number, resource))
                if len(batch) >= self.chunk:
                    self._write_batch(principal, batch, errors, counts, source.get("type"))
                    batch = []
                    control.page_done(self._progress(number, counts, position, size))
            if batch:
                self._write_batch(principal, batch, errors, counts, source.get("type"))
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

    @staticmethod
    def _progress(number: int, counts: dict, position: int, size: int) -> str:
        return (f"input {number}: {min(100, position * 100 // size)}% read, {counts['lines']} lines, "
                f"{counts['created'] + counts['updated'] + counts['unchanged']} stored, {counts['refused']} refused")

    # -- writes ---------------------------------------------------------------------------------
    def _write_batch(self, principal: Principal, batch: list[tuple[int, Any]], errors: Any, counts: dict,
                     expected_type: str | None) -> None:
        """One transaction for the batch; when a line is refused, each line in its own transaction."""
        resources = self.server.resources
        try:
            results = resources.atomic(lambda tx: [self._write(tx, principal, r, expected_type) for _, r in batch],
                                       what="A resource of this import")
        except Exception:
            results = None
        if results is not None:
            for result in results:
                self._count(counts, result)
            return
        for line_number, resource in batch:
            try:
                result = resources.atomic(lambda tx: self._write(tx, principal, resource, expected_type),
                                          what=f"Line {line_number}")
            except FHIRError as exc:
                self._refuse(errors, counts, line_number, exc.issues, exc.status)
                continue
            except Exception:
                log.exception("import: line %d failed unexpectedly", line_number)
                self._refuse(errors, counts, line_number, [Issue("error", "exception", "internal error; it has "
                                                                 "been logged")])
                continue
            self._count(counts, result)

    def _write(self, tx: Any, principal: Principal, resource: Any, expected_type: str | None) -> Any:
        resources = self.server.resources
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FHIRError.of(400, "structure", "a line must hold one FHIR resource (a JSON object with a "
                               "resourceType)")
        rtype = resource["resourceType"]
        if expected_type and rtype != expected_type:
            raise FHIRError.of(400, "invalid", f"this input is declared as {expected_type}, not {rtype}")
        if not self.server.definitions.is_served(rtype):
            raise FHIRError.of(404, "not-supported", f"Resource type '{rtype}' is not served here")
        if rtype == EOB:
            value = next((i.get("value") for i in resource.get("identifier") or []
                          if isinstance(i, dict) and i.get("system") == INSURER_SYSTEM), None)
            if not isinstance(value, str) or not value:
                raise FHIRError.of(400, "required", f"a care item needs the insurer's identifier ({INSURER_SYSTEM})"
                                   " to be imported idempotently", f"{EOB}.identifier")
            criteria = f"identifier={INSURER_SYSTEM}|{_escape(value)}"
            matches = resources.matches(tx, principal, rtype, criteria, "update")
            if len(matches) == 1 and resource.get("id") in (None, matches[0][1]):
                rid = matches[0][1]
                body = dict(resource, id=rid)
                current = tx.current(rtype, rid)
                # the everyday re-feed: an item identical to the stored one (the stored version passed the
                # checks) is recognised before validating it again; nothing is written, as the service would
                if current is not None and not current.deleted and resources._unchanged(current, body):
                    self.server.gate.authorize(principal, "update", rtype, body)
                    if resources.visible(principal, "update", rtype, rid, tx):
                        return WriteResult(current, False, [])
                return resources.update_in(tx, principal, rtype, rid, body)
            return resources.conditional_update_in(tx, principal, rtype, criteria, resource)
        if resource.get("id"):
            return resources.update_in(tx, principal, rtype, resource["id"], resource)
        return resources.create_in(tx, principal, rtype, resource)

    def _count(self, counts: dict, result: Any) -> None:
        stored = result.resource
        if result.created:
            counts["created"] += 1
        elif (stored.type, stored.id, stored.version) in self._local.written:
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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


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
