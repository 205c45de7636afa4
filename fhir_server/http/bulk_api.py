"""Bulk Data export over HTTP (Bulk Data Access IG 2.0.0, FHIR asynchronous request pattern).

* kick-off: ``GET|POST [base]/$export``, ``[base]/Patient/$export``, ``[base]/Group/[id]/$export``
  → ``202 Accepted`` with ``Content-Location`` (the status URL); POST takes a ``Parameters`` body;
* status: ``GET [base]/$export-status/[job]`` → ``202`` (``X-Progress``, ``Retry-After``) while
  queued or running, ``200`` with the JSON manifest when done, ``500`` with an
  OperationOutcome when the export failed, ``404`` once deleted;
* cancel / done: ``DELETE [base]/$export-status/[job]`` → ``202``;
* files: ``GET [base]/$export-file/[job]/[name]`` → ``application/fhir+ndjson``.

Only the client that started a job can see it (others get 404). The work itself is never
done here: a kick-off stores a job and wakes the worker (:mod:`fhir_server.bulk.worker`).
"""
from __future__ import annotations

import uuid
from email.utils import formatdate
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, request, send_file

from fhir_server.access.gate import OpenGate
from fhir_server.bulk.export import NDJSON, plan_export, principal_to_dict
from fhir_server.bulk.jobs import COMPLETED, FAILED, Job
from fhir_server.audit import capture as audit_capture
from fhir_server.http.negotiation import read_json
from fhir_server.http.responses import base_url, fhir, prefer_value, respond
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError, Issue, operation_outcome

bulk_api = Blueprint("bulk_api", __name__)

JOB = "<string(length=32):job_id>"
PARAMETER_VALUES = ("valueString", "valueCode", "valueInstant", "valueDateTime", "valueUri", "valueCanonical",
                    "valueBoolean", "valueInteger")


@bulk_api.url_value_preprocessor
def _files_ignore_accept(endpoint: str | None, values: dict | None) -> None:
    """Output files are NDJSON whatever the ``Accept`` (the IG's clients send ``application/fhir+ndjson``),
    so the JSON-only negotiation of ``before_request`` must not refuse them with a 406."""
    if endpoint == "bulk_api.download":
        request.environ["HTTP_ACCEPT"] = "*/*"


def _bulk() -> Any:
    bulk = getattr(fhir(), "bulk", None)
    if bulk is None or bulk.jobs is None:
        raise FHIRError.of(501, "not-supported", "Bulk export is not available on this server's store")
    return bulk


# -- kick-off -----------------------------------------------------------------------------------
@bulk_api.route("/$export", methods=["GET", "POST"])
def export_system() -> Response:
    return _kickoff("system", "/$export")


@bulk_api.route("/Patient/$export", methods=["GET", "POST"])
def export_patients() -> Response:
    return _kickoff("patient", "/Patient/$export")


@bulk_api.route("/Group/<string(minlength=1):group_id>/$export", methods=["GET", "POST"])
def export_group(group_id: str) -> Response:
    return _kickoff("group", f"/Group/{group_id}/$export", group_id)


def _kickoff(kind: str, path: str, group_id: str | None = None) -> Response:
    server, bulk = fhir(), _bulk()
    principal = g.principal
    if kind == "group":
        server.resources.read(principal, "Group", group_id)  # 404 / 410 / the gate's refusal
    params = _parameters()
    spec = plan_export(server, principal, kind, params, handling=prefer_value("handling"), group=group_id)
    if bulk.jobs.count_active(principal.subject) >= bulk.settings.max_active_per_client:
        raise FHIRError.of(429, "throttled", "Too many exports in progress for this client; wait for one to "
                           "finish or delete it", headers={"Retry-After": str(bulk.settings.retry_after * 6)})
    url = base_url() + path
    if request.method == "GET" and request.query_string:
        url += "?" + request.query_string.decode("utf-8", "replace")
    job = Job(uuid.uuid4().hex, kind, url, spec, principal_to_dict(principal), principal.subject)
    bulk.jobs.create(job)
    bulk.worker.wake()
    issues = [Issue(i["severity"], i["code"], i["diagnostics"], (i.get("expression") or [None])[0])
              for i in spec["issues"]]
    issues.append(Issue("information", "informational", f"Export accepted; poll {_status_url(job.id)}"))
    return respond(operation_outcome(issues), 202, {"Content-Location": _status_url(job.id)})


def _parameters() -> list[tuple[str, str]]:
    """The kick-off parameters: the query string, and for POST the ``Parameters`` body."""
    params = [(k, v) for k, v in request.args.items(multi=True)]
    if request.method != "POST" or not request.get_data(cache=True).strip():
        return params
    body = read_json(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError.of(400, "invalid", "A POST $export takes a Parameters resource")
    for index, parameter in enumerate(body.get("parameter") or []):
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if not isinstance(name, str):
            raise FHIRError.of(400, "invalid", "Every parameter needs a name", f"Parameters.parameter[{index}]")
        if "valueReference" in parameter:
            params.append((name, str((parameter["valueReference"] or {}).get("reference", ""))))
            continue
        value = next((parameter[k] for k in PARAMETER_VALUES if k in parameter), None)
        if value is None:
            raise FHIRError.of(400, "invalid", f"Parameter '{name}' has no supported value[x]",
                               f"Parameters.parameter[{index}]")
        params.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return params


# -- status, cancel, files ----------------------------------------------------------------------
def _status_url(job_id: str) -> str:
    return f"{base_url()}/$export-status/{job_id}"


def _job(job_id: str) -> Job:
    job = _bulk().jobs.get(job_id)
    if job is None or job.deleted or job.owner != g.principal.subject:
        raise FHIRError.of(404, "not-found", "No such export: it was deleted, has expired or never existed")
    return job


@bulk_api.get(f"/$export-status/{JOB}")
def status(job_id: str) -> Response:
    job = _job(job_id)
    settings = _bulk().settings
    if job.state == FAILED:
        raise FHIRError.of(500, "exception", job.error or "The export failed")
    if job.state != COMPLETED:
        progress = ((job.progress if job.state != "queued" else "queued") or "in progress")[:99]
        return respond(operation_outcome([Issue("information", "informational", f"In progress: {progress}")]), 202,
                       {"X-Progress": progress, "Retry-After": str(settings.retry_after)})
    result = job.result or {}
    files = f"{base_url()}/$export-file/{job.id}/"
    manifest = {
        "transactionTime": job.transaction_time,
        "request": job.request,
        "requiresAccessToken": not isinstance(fhir().gate, OpenGate),
        "output": [{"type": f["type"], "url": files + f["file"], "count": f["count"]}
                   for f in result.get("output", [])],
        "error": [{"type": f["type"], "url": files + f["file"], "count": f["count"]}
                  for f in result.get("error", [])],
    }
    response = Response(jsonio.dumps(manifest), status=200, content_type="application/json")
    expires = (job.completed_at or 0) + settings.retention_seconds
    response.headers["Expires"] = formatdate(expires, usegmt=True)
    return response


@bulk_api.delete(f"/$export-status/{JOB}")
def delete(job_id: str) -> Response:
    job = _job(job_id)
    bulk = _bulk()
    bulk.jobs.mark_deleted(job.id)
    bulk.worker.wake()
    message = "Export cancelled" if job.active else "Export deleted"
    return respond(operation_outcome([Issue("information", "informational", f"{message}; its files will be "
                                            "removed")]), 202)


@bulk_api.get(f"/$export-file/{JOB}/<string:name>")
def download(job_id: str, name: str) -> Response:
    job = _job(job_id)
    result = job.result or {}
    if job.state != COMPLETED or name not in {f["file"] for f in result.get("output", []) + result.get("error", [])}:
        raise FHIRError.of(404, "not-found", f"The export has no file '{name}'")
    path = Path(_bulk().settings.directory).resolve() / job.id / result["dir"] / name
    if not path.is_file():
        raise FHIRError.of(404, "not-found", f"The file '{name}' is no longer available")
    audit_capture.file(f"{base_url()}/$export-file/{job.id}/{name}")  # the file handed out, for the trace
    return send_file(path, mimetype=NDJSON, max_age=0, conditional=True, etag=False)


# -- $import (fhir_server.bulk.imports): kick-off, status, cancel; files through $export-file ------------
@bulk_api.post("/$import")
def import_kickoff() -> Response:
    from fhir_server.bulk import imports
    server, bulk = fhir(), _bulk()
    principal = g.principal
    imports.may_write_something(server, principal)
    if bulk.jobs.count_active(principal.subject) >= bulk.settings.max_active_per_client:
        raise FHIRError.of(429, "throttled", "Too many bulk jobs in progress for this client; wait for one to "
                           "finish or delete it", headers={"Retry-After": str(bulk.settings.retry_after * 6)})
    job_id = imports.new_job_id()
    if (request.mimetype or "").lower() in imports.NDJSON_TYPES:
        request.max_content_length = imports.MAX_UPLOAD_BYTES  # streamed to disk, never held in memory
        inputs = imports.plan_upload(server.imports, job_id, request.stream)
    else:
        inputs = imports.plan_parameters(server, principal, read_json(request), base_url())
    job = imports.new_job(principal, base_url() + "/$import", inputs, job_id)
    bulk.jobs.create(job)
    bulk.worker.wake()
    url = f"{base_url()}/$import-status/{job.id}"
    return respond(operation_outcome([Issue("information", "informational", f"Import accepted; poll {url}")]), 202,
                   {"Content-Location": url})


def _import_job(job_id: str) -> Job:
    job = _job(job_id)
    if job.kind != "import":
        raise FHIRError.of(404, "not-found", "No such import")
    return job


@bulk_api.get(f"/$import-status/{JOB}")
def import_status(job_id: str) -> Response:
    from fhir_server.bulk import imports
    job = _import_job(job_id)
    settings = _bulk().settings
    if job.state == FAILED:
        raise FHIRError.of(500, "exception", job.error or "The import failed")
    if job.state != COMPLETED:
        progress = ((job.progress if job.state != "queued" else "queued") or "in progress")[:99]
        return respond(operation_outcome([Issue("information", "informational", f"In progress: {progress}")]), 202,
                       {"X-Progress": progress, "Retry-After": str(settings.retry_after)})
    body = imports.manifest(job, f"{base_url()}/$export-file/{job.id}/", not isinstance(fhir().gate, OpenGate))
    response = Response(jsonio.dumps(body), status=200, content_type="application/json")
    response.headers["Expires"] = formatdate((job.completed_at or 0) + settings.retention_seconds, usegmt=True)
    return response


@bulk_api.delete(f"/$import-status/{JOB}")
def import_delete(job_id: str) -> Response:
    job = _import_job(job_id)
    return delete(job.id)
