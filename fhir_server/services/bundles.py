"""Batch and transaction Bundles (R4 http.html §3.1.0.11, bundle.html "Transaction Processing Rules").

A **transaction** is one atomic unit: every write entry runs inside ONE store
transaction, in the order the specification prescribes (DELETE, POST, PUT/PATCH,
then GET/HEAD), and the first entry that fails aborts everything: the store rolls
back and the client gets that entry's status with an OperationOutcome whose
expressions name ``Bundle.entry[i]``. Before anything is written:

* every POST entry gets its new id, so each ``fullUrl`` (``urn:uuid:``, ``urn:oid:``
  or an absolute URL) maps to ``Type/id``; PUT/PATCH entries map theirs to their
  target, conditional ones after their criteria were resolved;
* every reference to a ``fullUrl`` in the Bundle's resources (and in conditional
  URLs and conditional references) is rewritten to ``Type/id``; a ``urn:`` reference
  that names no entry is refused;
* conditional references (``Patient?identifier=sys|val``) are resolved to exactly
  one match, or the transaction fails (412);
* two entries acting on the same resource identity are refused (400).

GET/HEAD entries are checked (URL, type, search parameters, access) before the
writes, and answered after the commit through the same search and read services
as the single interactions, so they see what the transaction wrote.

A **batch** processes each entry on its own, in order, each write in its own store
transaction; a failing entry answers with its status and ``response.outcome`` and
the others carry on. Batch entries must not depend on each other, so a ``urn:``
reference to another entry is refused for that entry.

Each entry passes the same validation and access gate as the single interaction:
the work is done by :class:`ResourceService` and :class:`SearchService`.
"""
from __future__ import annotations

import base64
import binascii
import copy
import inspect
import logging
import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode

from fhir_server.access.gate import Principal
from fhir_server.model import jsonio
from fhir_server.model.ids import new_id
from fhir_server.model.outcome import FHIRError, Issue, operation_outcome
from fhir_server.search.parse import ParsedSearch
from fhir_server.services.lanes import Lane
from fhir_server.store.base import StoredResource, Transaction

log = logging.getLogger("fhir_server.bundles")

MAX_ENTRIES = 10_000
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
READ_METHODS = ("GET", "HEAD")
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
#: a PATCH entry's Binary contentType -> (the shape its data must have, what to say when it has not)
PATCH_SHAPES = {JSON_PATCH: (list, "a JSON Patch is an array of operations (RFC 6902)"),
                MERGE_PATCH: (dict, "a JSON Merge Patch is an object (RFC 7386)")}
TYPE = r"[A-Z][A-Za-z]{1,63}"
ID = r"[A-Za-z0-9\-.]{1,64}"
ID_RE = re.compile(f"^{ID}$")
TYPE_RE = re.compile(f"^{TYPE}$")
CONDITIONAL_REFERENCE = re.compile(f"^({TYPE})\\?(.+)$", re.S)
RELATIVE_REFERENCE = re.compile(f"^{TYPE}/{ID}(/_history/{ID})?$")
ABSOLUTE_FULL_URL = re.compile(f"^(https?://.+)/{TYPE}/{ID}(/_history/{ID})?$")


@dataclass
class Entry:
    """One ``Bundle.entry`` whose envelope was checked: what to do, on what."""

    index: int
    method: str
    url: str
    full_url: str | None = None
    op: str = ""  # create | update | cond-update | patch | cond-patch | delete | cond-delete
    #               read | vread | search | history
    rtype: str | None = None
    rid: str | None = None
    vid: str | None = None
    criteria: str = ""  # the query of a conditional write
    resource: Any = None
    patch: Any = None
    if_match: int | None = None
    if_none_exist: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    search: ParsedSearch | None = None
    search_path: str = ""
    history: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def label(self) -> str:
        return f"{self.where} ({self.method} {self.url})"

    @property
    def writes(self) -> bool:
        return self.method not in READ_METHODS


@dataclass
class Result:
    """What one entry did: its status and the resource version (or the read/search body) to show."""

    status: int
    stored: StoredResource | None = None
    body: Any = None  # GET results: the resource or the searchset/history Bundle
    issues: list[Issue] = field(default_factory=list)
    location: bool = False
    error: FHIRError | None = None
    read: bool = False  # a GET/HEAD: ``body`` is the answer, shown for GET only


def status_text(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def locate(error: FHIRError, entry: Entry) -> FHIRError:
    """The error with every issue pointing into ``Bundle.entry[i]`` (unless it already does)."""
    issues = []
    for issue in error.issues:
        expression = issue.expression or ""
        diagnostics = issue.diagnostics
        if expression.startswith("Bundle."):
            if not diagnostics.startswith("Bundle.entry["):
                issue = Issue(issue.severity, issue.code, f"{entry.label}: {diagnostics}", expression)
            issues.append(issue)
            continue
        rtype = entry.rtype or ""
        if rtype and (expression == rtype or expression.startswith((rtype + ".", rtype + "["))):
            where = f"{entry.where}.resource{expression[len(rtype):]}"
        elif expression == "resourceType":
            where = f"{entry.where}.resource.resourceType"
        else:
            where = entry.where
            if expression:
                diagnostics = f"{diagnostics} (at '{expression}')"
        if not diagnostics.startswith("Bundle.entry["):
            diagnostics = f"{entry.label}: {diagnostics}"
        issues.append(Issue(issue.severity, issue.code, diagnostics, where))
    return FHIRError(error.status, issues)


def entry_error(entry: Entry | int, status: int, code: str, message: str, path: str = "") -> FHIRError:
    where = entry.where if isinstance(entry, Entry) else f"Bundle.entry[{entry}]"
    label = entry.label if isinstance(entry, Entry) else where
    return FHIRError.of(status, code, f"{label}: {message}", where + (f".{path}" if path else ""))


class BundleService:
    """Runs batch and transaction Bundles with the resource and search services."""

    def __init__(self, resources: Any, search: Any, parser: Any, definitions: Any, renderer: Any,
                 max_entries: int = MAX_ENTRIES, lane: Lane | None = None):
        self.resources = resources  # fhir_server.services.resources.ResourceService
        self.search = search  # fhir_server.services.search.SearchService
        self.parser = parser
        self.definitions = definitions
        self.renderer = renderer
        self.gate = resources.gate
        self.max_entries = max_entries
        self.lane = lane or Lane()  # large Bundles run one at a time in this process (services/lanes.py)
        # SearchParser.parse takes the request's base (local absolute references) where it supports it
        self._parse_takes_base = "base" in inspect.signature(parser.parse).parameters

    @classmethod
    def for_server(cls, server: Any) -> "BundleService":
        """Built from a :class:`fhir_server.app.FHIRServer`."""
        return cls(server.resources, server.search, server.parser, server.definitions, server.renderer)

    # -- entry point -----------------------------------------------------------------------------
    def process(self, principal: Principal, bundle: Any, *, base: str, prefer_return: str | None = None,
                strict: bool = False) -> dict:
        """Run a ``batch`` or ``transaction`` Bundle; return the ``batch-response``/``transaction-response``.

        ``base`` is the server's base URL (absolute request URLs and full URLs are taken
        relative to it), ``prefer_return`` the ``Prefer: return=`` value, ``strict`` is
        ``Prefer: handling=strict`` for the searches in GET entries.
        """
        kind = self._check_bundle(bundle)
        raw_entries = bundle.get("entry") or []
        with self.lane.entered(len(raw_entries)):
            results = self._process(principal, kind, raw_entries, base, strict)
        out: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": f"{kind}-response"}
        if raw_entries:
            out["entry"] = [self._response_entry(results[i], prefer_return) for i in range(len(raw_entries))]
        return out

    def _process(self, principal: Principal, kind: str, raw_entries: list, base: str,
                 strict: bool) -> dict[int, Result]:
        if kind == "transaction":
            entries = [self._parse(principal, i, raw, base, strict) for i, raw in enumerate(raw_entries)]
            self._check_transaction(entries)
            results = self._run(principal, entries, base)
        else:
            results = {}
            for i, raw in enumerate(raw_entries):
                entry = None
                try:
                    entry = self._parse(principal, i, raw, base, strict)
                    results.update(self._run(principal, [entry], base, batch=True))
                except FHIRError as exc:
                    results[i] = Result(exc.status, error=locate(exc, entry) if entry else exc)
                except Exception:  # one entry's crash must not lose the others' answers
                    log.exception("batch entry %d failed unexpectedly", i)
                    results[i] = Result(500, error=entry_error(i, 500, "exception",
                                                               "Internal server error; it has been logged"))
        return results

    # -- the envelope ----------------------------------------------------------------------------
    def _check_bundle(self, bundle: Any) -> str:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            found = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
            raise FHIRError.of(400, "invalid", f"POST to the base URL takes a Bundle of type batch or "
                               f"transaction, not {found!r}", "Bundle.resourceType")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise FHIRError.of(400, "invalid", f"Bundle.type must be 'batch' or 'transaction' to be processed "
                               f"here, not {kind!r}", "Bundle.type")
        entries = bundle.get("entry")
        if entries is not None and not isinstance(entries, list):
            raise FHIRError.of(400, "structure", "Bundle.entry must be an array", "Bundle.entry")
        if entries and len(entries) > self.max_entries:
            raise FHIRError.of(413, "too-costly", f"The Bundle has {len(entries)} entries; this server processes "
                               f"at most {self.max_entries} per request. Split it.", "Bundle.entry")
        return kind

    def _parse(self, principal: Principal, index: int, raw: Any, base: str, strict: bool) -> Entry:
        """Check one entry's envelope and everything about it that needs no data: URL, type, access."""
        if not isinstance(raw, dict):
            raise entry_error(index, 400, "structure", "an entry must be a JSON object")
        request = raw.get("request")
        if not isinstance(request, dict):
            raise entry_error(index, 400, "required", "an entry of a batch or transaction needs a request",
                              "request")
        method = request.get("method")
        if method not in METHODS:
            raise entry_error(index, 400, "value" if method else "required",
                              f"request.method must be one of {', '.join(METHODS)}, not {method!r}",
                              "request.method")
        url = request.get("url")
        if not isinstance(url, str) or not url.strip():
            raise entry_error(index, 400, "required", "request.url is required", "request.url")
        full_url = raw.get("fullUrl")
        if full_url is not None and (not isinstance(full_url, str) or not full_url):
            raise entry_error(index, 400, "value", "fullUrl must be a non-empty string", "fullUrl")
        entry = Entry(index, method, url, full_url)
        for key in ("ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince"):
            if key in request and not isinstance(request[key], str):
                raise entry_error(entry, 400, "value", f"request.{key} must be a string", f"request.{key}")
        entry.if_none_exist = request.get("ifNoneExist") or None
        entry.if_none_match = request.get("ifNoneMatch") or None
        entry.if_modified_since = request.get("ifModifiedSince") or None
        if request.get("ifMatch"):
            tag = request["ifMatch"].strip().removeprefix("W/").strip('"')
            if not tag.isdigit():
                raise entry_error(entry, 400, "value", f"request.ifMatch must be an ETag such as W/\"3\", not "
                                  f"{request['ifMatch']!r}", "request.ifMatch")
            entry.if_match = int(tag)
        segments, query = self._split_url(entry, base)
        try:
            if entry.writes:
                self._parse_write(entry, segments, query, raw)
            else:
                self._parse_read(principal, entry, segments, query, base, strict)
        except FHIRError as exc:
            raise locate(exc, entry) from None
        return entry

    @staticmethod
    def _split_url(entry: Entry, base: str) -> tuple[list[str], str]:
        url = entry.url.strip()
        if "://" in url.partition("?")[0]:  # absolute; a query may hold URLs (identifier=https://sys|value)
            if not url.startswith(base.rstrip("/") + "/") and url != base.rstrip("/"):
                raise entry_error(entry, 400, "not-supported", f"request.url must be relative to this server's "
                                  f"base {base}", "request.url")
            url = url[len(base.rstrip("/")):]
        path, _, query = url.partition("?")
        segments = [s for s in path.strip("/").split("/") if s] if path.strip("/") else []
        for segment in segments:
            if segment.startswith("$") or segment == "_search":
                raise entry_error(entry, 400, "not-supported", f"'{segment}' is not supported in a batch or "
                                  "transaction entry", "request.url")
        return segments, query

    def _parse_write(self, entry: Entry, segments: list[str], query: str, raw: dict) -> None:
        method = entry.method
        shape = len(segments)
        if not segments or not TYPE_RE.match(segments[0]):
            raise entry_error(entry, 400, "invalid", f"{method} needs a URL '[type]' or '[type]/[id]'",
                              "request.url")
        entry.rtype = segments[0]
        if method == "POST":
            if shape != 1 or query:
                raise entry_error(entry, 400, "invalid", "a POST (create) entry's URL is the resource type only; "
                                  "conditional creates use request.ifNoneExist", "request.url")
            entry.op = "create"
            if entry.if_none_exist:
                entry.if_none_exist = entry.if_none_exist.split("?", 1)[1] if "?" in entry.if_none_exist \
                    else entry.if_none_exist
        elif shape == 2:
            if query:
                raise entry_error(entry, 400, "invalid", f"{method} [type]/[id] takes no query", "request.url")
            if not ID_RE.match(segments[1]):
                raise entry_error(entry, 400, "invalid", f"'{segments[1]}' is not a valid resource id",
                                  "request.url")
            entry.rid = segments[1]
            entry.op = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        elif shape == 1:
            if not query:
                raise entry_error(entry, 400, "invalid", f"{method} on a type needs search criteria: "
                                  f"'[type]?[criteria]', or name the resource: '[type]/[id]'", "request.url")
            entry.criteria = query
            entry.op = {"PUT": "cond-update", "PATCH": "cond-patch", "DELETE": "cond-delete"}[method]
        else:
            raise entry_error(entry, 400, "invalid", f"{method} needs a URL '[type]/[id]' or '[type]?[criteria]'",
                              "request.url")
        interaction = {"create": "create", "update": "update", "cond-update": "update", "patch": "patch",
                       "cond-patch": "patch", "delete": "delete", "cond-delete": "delete"}[entry.op]
        self.resources.served(entry.rtype, interaction)
        resource = raw.get("resource")
        if method in ("POST", "PUT"):
            if not isinstance(resource, dict):
                raise entry_error(entry, 400, "required", f"a {method} entry needs a resource", "resource")
            if resource.get("resourceType") != entry.rtype:
                raise entry_error(entry, 400, "invalid", f"resource.resourceType {resource.get('resourceType')!r} "
                                  f"does not match the request URL type '{entry.rtype}'", "resource.resourceType")
            entry.resource = resource
        elif method == "PATCH":
            entry.patch = self._patch_body(entry, resource)
        if entry.criteria:
            self.parser.criteria(entry.rtype, entry.criteria)  # 400 now for unknown or malformed parameters
        if entry.if_none_exist:
            self.parser.criteria(entry.rtype, entry.if_none_exist)

    @staticmethod
    def _patch_body(entry: Entry, resource: Any) -> list | dict:
        """The patch of a PATCH entry: a Binary (bundle.html "Patch") holding a JSON Patch
        (application/json-patch+json, an array) or a JSON Merge Patch (application/merge-patch+json, an object)."""
        if not isinstance(resource, dict):
            raise entry_error(entry, 400, "required", "a PATCH entry needs a resource: a Binary holding a JSON "
                              f"Patch ({JSON_PATCH}, base64 data)", "resource")
        if resource.get("resourceType") == "Parameters":
            raise entry_error(entry, 400, "not-supported", "FHIRPath Patch (Parameters) is not supported; send "
                              f"a JSON Patch as a Binary with contentType {JSON_PATCH}", "resource")
        if resource.get("resourceType") != "Binary":
            raise entry_error(entry, 400, "invalid", "a PATCH entry's resource must be a Binary holding a JSON "
                              f"Patch, not {resource.get('resourceType')!r}", "resource.resourceType")
        content_type = str(resource.get("contentType", "")).split(";")[0].strip().lower()
        shape = PATCH_SHAPES.get(content_type)
        if shape is None:
            raise entry_error(entry, 400, "not-supported", f"the Binary's contentType must be {JSON_PATCH} or "
                              f"{MERGE_PATCH}, not {resource.get('contentType')!r}", "resource.contentType")
        data = resource.get("data")
        if not isinstance(data, str) or not data:
            raise entry_error(entry, 400, "required", "the Binary carries no data (base64 JSON)", "resource.data")
        try:
            patch = jsonio.loads(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise entry_error(entry, 400, "structure", f"the Binary data is not base64 JSON: {exc}",
                              "resource.data") from None
        if not isinstance(patch, shape[0]):
            raise entry_error(entry, 400, "structure", shape[1], "resource.data")
        return patch

    def _parse_read(self, principal: Principal, entry: Entry, segments: list[str], query: str, base: str,
                    strict: bool) -> None:
        params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("_format", "_pretty")]
        root = base.rsplit("/fhir", 1)[0] if "/fhir" in base else base
        prefix = base[len(root):]
        shape = len(segments)
        history_at = segments.index("_history") if "_history" in segments else None
        if history_at is not None and history_at == shape - 1 and shape <= 3:
            # _history, [type]/_history, [type]/[id]/_history
            entry.rtype = segments[0] if shape >= 2 else None
            entry.rid = segments[1] if shape == 3 else None
            self._check_ids(entry)
            if entry.rtype:
                self.resources.served(entry.rtype, "history-instance" if entry.rid else "history-type")
            self.gate.authorize(principal, "history-instance" if entry.rid else "history-type" if entry.rtype
                                else "history-system", entry.rtype, None)
            entry.op = "history"
            entry.history = self._history_args(entry, params)
            entry.search_path = prefix + "/" + "/".join(segments)
            return
        if shape == 4 and history_at == 2:
            entry.rtype, entry.rid, entry.vid = segments[0], segments[1], segments[3]
            self._check_ids(entry)
            self.resources.served(entry.rtype, "vread")
            self.gate.authorize(principal, "vread", entry.rtype, None)
            entry.op = "vread"
            return
        if shape == 2 and segments[1] != "_history":
            entry.rtype, entry.rid = segments
            self._check_ids(entry)
            self.resources.served(entry.rtype, "read")
            self.gate.authorize(principal, "read", entry.rtype, None)
            entry.op = "read"
            return
        if shape <= 1 or (shape == 3 and segments[0] == "Patient"):
            if shape == 0:
                types = tuple(t for k, v in params if k == "_type" for t in v.split(",") if t)
                unknown = [t for t in types if not self.definitions.is_served(t)]
                if unknown:
                    raise entry_error(entry, 400, "invalid", f"_type names types this server does not serve: "
                                      f"{', '.join(unknown)}", "request.url")
            else:
                types = (segments[-1],)
                if not TYPE_RE.match(types[0]):
                    raise entry_error(entry, 400, "invalid", f"'{types[0]}' is not a resource type", "request.url")
            for rtype in types or (None,):
                if rtype is not None:
                    self.resources.served(rtype, "search-type")
                self.gate.authorize(principal, "search", rtype, None)
            options = {"base": base} if self._parse_takes_base else {}
            parsed = self.parser.parse(types, params, strict=strict, **options)
            if shape == 3:
                entry.rid = segments[1]
                links = self.definitions.patient_compartment.get(types[0])
                if not links:
                    raise entry_error(entry, 404, "not-found", f"{types[0]} is not in the Patient compartment",
                                      "request.url")
                from fhir_server.app import FHIRServer
                parsed.query.clauses.append(FHIRServer.compartment_clause(types[0], "Patient", entry.rid,
                                                                          tuple(links)))
            entry.rtype = types[0] if len(types) == 1 else None
            entry.op = "search"
            entry.search = parsed
            entry.search_path = prefix + ("/" + "/".join(segments) if segments else "")
            return
        raise entry_error(entry, 400, "invalid", f"Cannot {entry.method} '{entry.url}': expected [type]/[id], "
                          "[type]/[id]/_history/[vid], [type]?[search], or a _history URL", "request.url")

    @staticmethod
    def _check_ids(entry: Entry) -> None:
        if entry.rtype is not None and not TYPE_RE.match(entry.rtype):
            raise entry_error(entry, 400, "invalid", f"'{entry.rtype}' is not a resource type", "request.url")
        for value in (entry.rid, entry.vid):
            if value is not None and not ID_RE.match(value):
                raise entry_error(entry, 400, "invalid", f"'{value}' is not a valid id", "request.url")

    @staticmethod
    def _history_args(entry: Entry, params: list[tuple[str, str]]) -> dict[str, Any]:
        from fhir_server.model.dates import period_instants
        args = dict(params)
        count = args.get("_count", "50")
        if not count.isdigit():
            raise entry_error(entry, 400, "invalid", "_count must be a non-negative integer", "request.url")
        out: dict[str, Any] = {"count": min(int(count), 1000), "cursor": args.get("_page"),
                               "kept": [(k, v) for k, v in params if k in ("_count", "_since", "_at")]}
        for name, key in (("_since", "since"), ("_at", "at")):
            value = args.get(name)
            if value is None:
                out[key] = None
                continue
            try:
                out[key] = period_instants(value) if key == "at" else period_instants(value)[0]
            except ValueError:
                raise entry_error(entry, 400, "invalid", f"{name} must be a FHIR instant, not '{value}'",
                                  "request.url") from None
        return out

    def _check_transaction(self, entries: list[Entry]) -> None:
        """What can be refused before touching the store: shared fullUrls, literal identity overlaps."""
        full_urls: dict[str, int] = {}
        targets: dict[tuple[str, str], int] = {}
        creates: dict[tuple[str, str], int] = {}
        for entry in entries:
            if entry.full_url and entry.writes:
                if entry.full_url in full_urls:
                    raise entry_error(entry, 400, "invalid", f"fullUrl {entry.full_url!r} is also the fullUrl of "
                                      f"Bundle.entry[{full_urls[entry.full_url]}]", "fullUrl")
                full_urls[entry.full_url] = entry.index
            if entry.writes and entry.rid is not None:
                key = (entry.rtype, entry.rid)
                if key in targets:
                    raise self._overlap(entry, targets[key], f"{key[0]}/{key[1]}")
                targets[key] = entry.index
            conditional = entry.if_none_exist or (entry.criteria if entry.op == "cond-update" else None)
            if conditional:  # two entries that may each create the resource these criteria designate
                key = (entry.rtype, self.parser.canonical_criteria(conditional))
                if key in creates:
                    raise self._overlap(entry, creates[key], f"{key[0]}?{conditional}")
                creates[key] = entry.index

    @staticmethod
    def _overlap(entry: Entry, other: int, what: str) -> FHIRError:
        return entry_error(entry, 400, "invalid", f"this entry and Bundle.entry[{other}] both act on {what}; a "
                           "transaction may act on each resource only once (bundle.html, transaction processing "
                           "rules)")

    # -- running ---------------------------------------------------------------------------------
    def _run(self, principal: Principal, entries: list[Entry], base: str, *, batch: bool = False) -> dict[int, Result]:
        """The writes in one atomic unit (retried on a concurrent writer), then the reads."""
        writes = [e for e in entries if e.writes]
        results: dict[int, Result] = {}
        if writes:
            if_match = next((e.if_match for e in writes if e.if_match is not None), None)
            results.update(self.resources.atomic(
                lambda tx: _Unit(self, tx, principal, entries, base, batch).run(),
                if_match=if_match, what="A resource this Bundle changes"))
        for entry in entries:
            if entry.writes:
                continue
            try:
                results[entry.index] = self._read(principal, entry, base)
            except FHIRError as exc:
                if not writes:
                    raise locate(exc, entry) from None
                # the writes are committed; only a concurrent change since can make a checked read fail
                located = locate(exc, entry)
                results[entry.index] = Result(located.status, error=located)
        return results

    def _read(self, principal: Principal, entry: Entry, base: str) -> Result:
        from werkzeug.datastructures import MultiDict

        from fhir_server.http.bundles import history_bundle, search_bundle
        head = entry.method == "HEAD"
        if entry.op == "search":
            result = self.search.search(principal, entry.search)
            return Result(200, body=None if head else search_bundle(result, entry.search, base, entry.search_path,
                                                                    self.renderer), read=True)
        if entry.op == "history":
            h = entry.history
            page = self.resources.history(principal, entry.rtype, entry.rid, since=h["since"], at=h["at"],
                                          count=h["count"], cursor=h["cursor"])
            return Result(200, body=None if head else history_bundle(page, base, entry.search_path,
                                                                     MultiDict(h["kept"])), read=True)
        if entry.op == "vread":
            stored = self.resources.vread(principal, entry.rtype, entry.rid, entry.vid)
        else:
            stored = self.resources.read(principal, entry.rtype, entry.rid)
            if self._not_modified(entry, stored):
                return Result(304, stored, read=True)
        return Result(200, stored, body=None if head else jsonio.loads(stored.body), read=True)

    @staticmethod
    def _not_modified(entry: Entry, stored: StoredResource) -> bool:
        if entry.if_none_match:
            tags = {t.strip().removeprefix("W/").strip('"') for t in entry.if_none_match.split(",")}
            return str(stored.version) in tags or "*" in tags
        if entry.if_modified_since:
            from fhir_server.model.dates import parse_range
            try:
                since = parse_range(entry.if_modified_since)
            except ValueError:
                return False
            return parse_range(stored.last_updated)[0] <= since[1]
        return False

    # -- the response ----------------------------------------------------------------------------
    def _response_entry(self, result: Result, prefer_return: str | None) -> dict:
        response: dict[str, Any] = {"status": status_text(result.status)}
        out: dict[str, Any] = {}
        if result.error is not None:
            response["outcome"] = operation_outcome(result.error.issues)
            out["response"] = response
            return out
        stored = result.stored
        if stored is not None:
            if result.location:
                response["location"] = f"{stored.type}/{stored.id}/_history/{stored.version}"
            response["etag"] = f'W/"{stored.version}"'
            response["lastModified"] = stored.last_updated
        if result.read:  # a read or a search: the answer is the content
            if result.status == 200 and result.body is not None:
                out["resource"] = result.body
        elif stored is not None and not stored.deleted and result.status != 304:
            if prefer_return == "OperationOutcome":
                response["outcome"] = operation_outcome(result.issues)
            elif prefer_return != "minimal":
                out["resource"] = jsonio.loads(stored.body)
        out["response"] = response
        return out


class _Unit:
    """One attempt at the writes of a transaction (or of one batch entry), inside ``tx``."""

    def __init__(self, service: BundleService, tx: Transaction, principal: Principal, entries: list[Entry],
                 base: str, batch: bool):
        self.s = service
        self.tx = tx
        self.principal = principal
        self.entries = entries
        self.base = base.rstrip("/")
        self.batch = batch
        self.mapping: dict[str, str] = {}  # fullUrl -> Type/id
        self.planned: dict[int, str] = {}  # entry index -> the id its write lands on
        self.conditional: dict[tuple[str, str], str] = {}  # (type, canonical criteria) -> Type/id
        self.criteria: dict[int, str] = {}  # entry index -> its conditional criteria, fullUrls rewritten
        self.identities: dict[tuple[str, str], int] = {}
        self.results: dict[int, Result] = {}

    def run(self) -> dict[int, Result]:
        entries = self.entries
        for entry in entries:  # new ids up front, so every fullUrl maps to Type/id before anything runs
            if entry.op == "create":
                self.planned[entry.index] = new_id()
                if not entry.if_none_exist:
                    self._map(entry, self.planned[entry.index])
            elif entry.op in ("update", "patch"):
                self.planned[entry.index] = entry.rid
                self._map(entry, entry.rid)
        for entry in entries:
            if entry.op in ("delete", "cond-delete"):
                self._step(entry, self._delete)
        for entry in entries:  # conditional identities, on the state after the deletes
            if entry.op == "create" and entry.if_none_exist or entry.op in ("cond-update", "cond-patch"):
                self._step(entry, self._resolve)
        bodies = {}
        for entry in entries:
            if entry.op in ("create", "update", "cond-update"):
                bodies[entry.index] = self._step(entry, lambda e: self._rewrite(e, copy.deepcopy(e.resource)))
        for entry in entries:
            if entry.op == "create":
                self._step(entry, lambda e: self._create(e, bodies[e.index]))
        for entry in entries:
            if entry.op in ("update", "cond-update", "patch", "cond-patch"):
                self._step(entry, lambda e: self._update(e, bodies.get(e.index)))
        for entry in entries:
            if entry.op in ("read", "vread"):
                self._step(entry, self._check_read)
        return self.results

    def _step(self, entry: Entry, action: Callable[[Entry], Any]) -> Any:
        try:
            return action(entry)
        except FHIRError as exc:
            raise locate(exc, entry) from None

    def _map(self, entry: Entry, rid: str) -> None:
        if entry.full_url:
            self.mapping[entry.full_url] = f"{entry.rtype}/{rid}"

    def _claim(self, entry: Entry, rtype: str, rid: str) -> None:
        key = (rtype, rid)
        other = self.identities.get(key)
        if other is not None and other != entry.index:
            raise self.s._overlap(entry, other, f"{rtype}/{rid}")
        self.identities[key] = entry.index

    def _criteria(self, criteria: str) -> str:
        """Conditional criteria with values naming a fullUrl of the Bundle replaced by its Type/id."""
        params = parse_qsl(criteria, keep_blank_values=True)
        if not any(v in self.mapping for _, v in params):
            return criteria
        return urlencode([(k, self.mapping.get(v, v)) for k, v in params])

    def _matches(self, rtype: str, criteria: str, interaction: str = "search") -> list[tuple[str, str]]:
        """The matches of conditional criteria among what the principal may reach with ``interaction``."""
        return self.s.resources.matches(self.tx, self.principal, rtype, criteria, interaction)

    # -- the steps -------------------------------------------------------------------------------
    def _delete(self, entry: Entry) -> None:
        resources = self.s.resources
        if entry.op == "delete":
            self._claim(entry, entry.rtype, entry.rid)
            if entry.if_match is not None:
                resources.check_if_match(self.tx.current(entry.rtype, entry.rid), entry.if_match)
            marker = resources.delete_in(self.tx, self.principal, entry.rtype, entry.rid)
            self.results[entry.index] = Result(204, marker)
            return
        resources.served(entry.rtype, "delete")
        criteria = self._criteria(entry.criteria)
        matches = self._matches(entry.rtype, criteria, "delete")
        if len(matches) > 1:
            raise FHIRError.of(412, "multiple-matches", f"The criteria '{criteria}' match {len(matches)} "
                               "resources; conditional delete removes one resource at a time here")
        marker = None
        for mtype, mid in matches:
            self._claim(entry, mtype, mid)
            marker = resources.delete_in(self.tx, self.principal, mtype, mid)
        self.results[entry.index] = Result(204, marker)

    def _resolve(self, entry: Entry) -> None:
        """Which resource a conditional create/update/patch lands on, so its fullUrl can be mapped."""
        criteria = self._criteria(entry.if_none_exist if entry.op == "create" else entry.criteria)
        self.criteria[entry.index] = criteria
        matches = self._matches(entry.rtype, criteria, {"create": "create", "cond-update": "update"}.get(entry.op,
                                                                                                         "patch"))
        if len(matches) > 1:
            raise FHIRError.of(412, "multiple-matches", f"The criteria '{criteria}' match {len(matches)} "
                               "resources; be more selective")
        if matches:
            rid = matches[0][1]
            if entry.op == "cond-update" and entry.resource.get("id") not in (None, rid):
                raise FHIRError.of(400, "invalid", f"The resource id '{entry.resource['id']}' differs from the "
                                   f"matching resource {rid}", f"{entry.rtype}.id")
        elif entry.op == "cond-patch":
            raise FHIRError.of(404, "not-found", f"The criteria '{criteria}' match no resource")
        elif entry.op == "cond-update" and entry.resource.get("id"):
            rid = entry.resource["id"]
        else:
            rid = self.planned.setdefault(entry.index, new_id())
        self.planned[entry.index] = rid
        self._map(entry, rid)
        if entry.op == "create":
            self.conditional[(entry.rtype, self.s.parser.canonical_criteria(criteria))] = f"{entry.rtype}/{rid}"

    def _rewrite(self, entry: Entry, body: dict) -> dict:
        """Every reference to a fullUrl of the Bundle → Type/id; conditional references → their match."""
        own_base = None
        if entry.full_url:
            match = ABSOLUTE_FULL_URL.match(entry.full_url)
            own_base = match.group(1) if match else None
        self._walk(entry, body, f"{entry.where}.resource", own_base or self.base)
        text = body.get("text")
        if isinstance(text, dict) and isinstance(text.get("div"), str) and "urn:" in text["div"]:
            div = text["div"]
            for key, value in self.mapping.items():
                if key.startswith("urn:"):
                    div = div.replace(f'"{key}"', f'"{value}"')
            text["div"] = div
        return body

    def _rewrite_patch(self, entry: Entry) -> list:
        """References to fullUrls in the values a JSON Patch writes (``{"reference": ...}`` or ``.../reference``)."""
        patch = copy.deepcopy(entry.patch)
        path = f"{entry.where}.resource.data"
        for op in patch:
            if not isinstance(op, dict):
                continue
            value = op.get("value")
            if isinstance(value, str) and str(op.get("path", "")).endswith("/reference"):
                op["value"] = self._reference(entry, value, path, self.base)
            elif isinstance(value, (dict, list)):
                self._walk(entry, value, path, self.base)
        return patch

    def _walk(self, entry: Entry, node: Any, path: str, relative_base: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    node[key] = self._reference(entry, value, f"{path}.reference", relative_base)
                elif isinstance(value, (dict, list)):
                    self._walk(entry, value, f"{path}.{key}", relative_base)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                self._walk(entry, item, f"{path}[{i}]", relative_base)

    def _reference(self, entry: Entry, ref: str, path: str, relative_base: str) -> str:
        mapped = self.mapping.get(ref)
        if mapped is not None:
            return mapped
        if RELATIVE_REFERENCE.match(ref):
            mapped = self.mapping.get(f"{relative_base}/{ref}")
            return mapped if mapped is not None else ref
        if ref.startswith(("urn:uuid:", "urn:oid:")):
            hint = (" (batch entries are processed independently and cannot reference each other; use a "
                    "transaction)") if self.batch else ""
            raise FHIRError.of(400, "invalid", f"The reference '{ref}' names no fullUrl of the Bundle{hint}", path)
        conditional = CONDITIONAL_REFERENCE.match(ref)
        if conditional:
            return self._conditional_reference(entry, conditional.group(1), conditional.group(2), path)
        return ref

    def _conditional_reference(self, entry: Entry, rtype: str, query: str, path: str) -> str:
        """``Type?criteria`` → the ``Type/id`` of its single match (bundle.html "Conditional References")."""
        if not self.s.definitions.is_served(rtype):
            raise FHIRError.of(400, "invalid", f"Conditional reference '{rtype}?{query}': {rtype} is not served "
                               "here", path)
        criteria = self._criteria(query)
        key = (rtype, self.s.parser.canonical_criteria(criteria))
        if key in self.conditional:
            return self.conditional[key]
        self.s.gate.authorize(self.principal, "search", rtype, None)
        try:
            matches = self._matches(rtype, criteria)
        except FHIRError as exc:
            raise FHIRError(exc.status, [Issue(i.severity, i.code, f"Conditional reference '{rtype}?{query}': "
                                               f"{i.diagnostics}", path) for i in exc.issues]) from None
        if len(matches) != 1:
            code = "multiple-matches" if matches else "not-found"
            raise FHIRError.of(412, code, f"The conditional reference '{rtype}?{query}' matches {len(matches)} "
                               "resources; it must match exactly one", path)
        self.conditional[key] = f"{matches[0][0]}/{matches[0][1]}"
        return self.conditional[key]

    def _create(self, entry: Entry, body: dict) -> None:
        planned = self.planned[entry.index]
        criteria = self.criteria.get(entry.index)
        result = self.s.resources.create_in(self.tx, self.principal, entry.rtype, body, criteria, rid=planned)
        if result.resource.id != planned:
            raise FHIRError.of(409, "conflict", f"ifNoneExist '{criteria}' now matches "
                               f"{entry.rtype}/{result.resource.id}, written by another entry of this Bundle")
        self._claim(entry, entry.rtype, planned)
        self.results[entry.index] = Result(201 if result.created else 200, result.resource, issues=result.outcome,
                                           location=True)

    def _update(self, entry: Entry, body: dict | None) -> None:
        resources, tx, principal = self.s.resources, self.tx, self.principal
        rtype, planned = entry.rtype, self.planned[entry.index]
        if entry.op in ("cond-update", "cond-patch"):
            # the criteria were resolved before the creates; they must still designate the same resource
            criteria = self.criteria[entry.index]
            matches = self._matches(rtype, criteria, "update" if entry.op == "cond-update" else "patch")
            if [m[1] for m in matches] not in ([planned], []) or (not matches and entry.op == "cond-patch"):
                raise FHIRError.of(409, "conflict", f"The criteria '{criteria}' now match "
                                   f"{len(matches)} resource(s), after the other entries of this Bundle")
            if matches and body is not None and "id" not in body:
                body = dict(body, id=planned)
        self._claim(entry, rtype, planned)
        if entry.op in ("patch", "cond-patch"):
            result = resources.patch_in(tx, principal, rtype, planned, self._rewrite_patch(entry), entry.if_match)
            self.results[entry.index] = Result(200, result.resource, issues=result.outcome, location=True)
            return
        if entry.op == "cond-update" and "id" not in body:
            result = resources.create_in(tx, principal, rtype, body, rid=planned)
        else:
            result = resources.update_in(tx, principal, rtype, planned, body, entry.if_match)
        self.results[entry.index] = Result(201 if result.created else 200, result.resource, issues=result.outcome,
                                           location=True)

    def _check_read(self, entry: Entry) -> None:
        """A read in a transaction must succeed with the writes, or nothing is committed."""
        current = self.tx.current(entry.rtype, entry.rid)
        if current is not None and self.s.gate.limits(self.principal, entry.rtype, entry.op) and (
                current.deleted or not self.s.resources.visible(self.principal, entry.op, entry.rtype, entry.rid,
                                                                self.tx)):
            current = None  # out of reach: the same answer as an unknown id
        if current is None or (entry.vid is not None and (not entry.vid.isdigit()
                                                          or int(entry.vid) > current.version)):
            raise FHIRError.of(404, "not-found", f"{entry.rtype}/{entry.rid}"
                               + (f" has no version {entry.vid}" if entry.vid and current else " is not known"))
        if current.deleted and entry.vid is None:
            raise FHIRError.of(410, "deleted", f"{entry.rtype}/{entry.rid} is deleted")
