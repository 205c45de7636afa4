"""Bulk Data export (Bulk Data Access IG 2.0.0): what a kick-off asks for, and the run that writes it.

:func:`plan_export` turns the kick-off parameters into a job *spec* (plain JSON, stored
with the job) or a 400. :class:`Exporter` runs a spec in the background worker:

* one query per type (per ``_typeFilter`` of that type, per chunk of Group members) with
  the ``_since`` clause and the principal's constraints (``SearchService.constrained``),
  paged through ``Store.search`` (keyset); each page's stored body bytes are written as
  NDJSON lines without parsing, so memory stays bounded by one page whatever the size;
* resources are parsed only when a check needs them: the Patient compartment test of a
  Patient-level export (which references to a Patient the compartment's parameters make),
  and de-duplication across Group member chunks; several ``_typeFilter`` queries of one
  type are ORed, a resource matching an earlier one is skipped (one store query per page);
* one file per type, a new one above ``max_file_bytes`` / ``max_file_resources``;
* between pages the worker's :class:`Control` renews the lease, records ``X-Progress`` and
  stops the run on cancel, lost lease or shutdown.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol
from urllib.parse import parse_qsl

import orjson

from fhir_server.access.gate import Principal
from fhir_server.model import jsonio
from fhir_server.model.dates import parse_range
from fhir_server.model.outcome import FHIRError, Issue
from fhir_server.search.extract import parse_reference
from fhir_server.search.query import AnyOf, Clause, Query, ReferenceValue, TokenValue

OUTPUT_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
NDJSON = "application/fhir+ndjson"
UNSUPPORTED = {"includeAssociatedData"}  # known to the IG, not implemented here
IGNORED = {"_format", "_pretty"}
RESULT_PARAMS = ("_include", "_revinclude", "_sort", "_count", "_summary", "_elements", "_total", "_contained",
                 "_containedType", "_page", "_format", "_pretty")
FIRST_PAGE = 10  # resources in the first page of each query, before their size is known
_FILTER_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]{1,63}\?)")


# -- the principal, stored with the job -----------------------------------------------------------
def principal_to_dict(principal: Principal) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(principal):
        value = getattr(principal, f.name)
        out[f.name] = sorted(value) if isinstance(value, (set, frozenset)) else value
    return out


def principal_from_dict(data: dict[str, Any]) -> Principal:
    values = {}
    for f in dataclasses.fields(Principal):
        if f.name in data:
            value = data[f.name]
            values[f.name] = frozenset(value) if isinstance(value, list) else value
    return Principal(**values)


# -- kick-off -------------------------------------------------------------------------------------
def plan_export(server: Any, principal: Principal, kind: str, params: list[tuple[str, str]], *,
                handling: str | None = None, group: str | None = None) -> dict[str, Any]:
    """Validate the kick-off parameters and authorize them; the job spec (with the warnings to report).

    ``handling`` is the ``Prefer: handling`` value. Parameters this server does not support
    are refused with ``strict`` and otherwise ignored with a warning (also written to the
    manifest's ``error`` file). Unknown types and ``_typeFilter`` queries it cannot run are
    refused unless the client said ``handling=lenient`` (IG: "SHOULD return an error").
    """
    strict, lenient = handling == "strict", handling == "lenient"
    issues: list[Issue] = []
    values: dict[str, list[str]] = {}
    for name, value in params:
        if name in IGNORED:
            continue
        if name in ("_outputFormat", "_since", "_type", "_typeFilter", "_elements", "patient"):
            values.setdefault(name, []).append(value)
            continue
        message = (f"The parameter '{name}' is not supported by this server" if name in UNSUPPORTED
                   else f"Unknown $export parameter '{name}'")
        if strict:
            raise FHIRError.of(400, "not-supported", message, name)
        issues.append(Issue("warning", "not-supported", f"{message}; it was ignored", name))

    # an unencoded '+' arrives as a space: "application/fhir+ndjson", "...T10:00:00+01:00"
    formats = {v.strip().replace(" ", "+") for v in values.get("_outputFormat", [])}
    if len(formats) > 1:
        raise FHIRError.of(400, "invalid", "_outputFormat may be given once", "_outputFormat")
    if formats and not formats <= OUTPUT_FORMATS:
        raise FHIRError.of(400, "not-supported", f"_outputFormat '{formats.pop()}' is not supported; this server "
                           "writes application/fhir+ndjson", "_outputFormat")

    since = None
    if values.get("_since"):
        if len(set(values["_since"])) > 1:
            raise FHIRError.of(400, "invalid", "_since may be given once", "_since")
        since = values["_since"][0].strip().replace(" ", "+")
        try:
            parse_range(since)
        except ValueError:
            raise FHIRError.of(400, "invalid", f"_since must be a FHIR instant, not '{since}'", "_since") from None

    definitions = server.definitions
    compartment = definitions.patient_compartment
    in_scope = [t for t in sorted(definitions.served)
                if kind == "system" or t == "Patient" or t in compartment]
    requested = _dedupe(t.strip() for v in values.get("_type", []) for t in v.split(",") if t.strip())
    gate = server.gate
    if requested:
        types = []
        for rtype in requested:
            if not definitions.is_served(rtype):
                problem = f"_type names '{rtype}', a resource type this server does not serve"
            elif rtype not in in_scope:
                problem = f"_type names '{rtype}', which is not in the Patient compartment"
            else:
                gate.authorize(principal, "export", rtype)
                types.append(rtype)
                continue
            if not definitions.is_served(rtype) and not lenient:
                raise FHIRError.of(400, "not-supported", problem, "_type")
            # a served type outside the compartment is dropped; only-such-types is refused below
            issues.append(Issue("warning", "not-supported", f"{problem}; it was ignored", "_type"))
        if not types:
            raise FHIRError.of(400, "not-supported", "None of the types in _type can be exported from "
                               f"{'this server' if kind == 'system' else 'the Patient compartment'}", "_type")
    else:
        gate.authorize(principal, "export", None)
        types = []
        for rtype in in_scope:
            try:
                gate.authorize(principal, "export", rtype)
            except FHIRError:
                continue  # "all supported resources within the scope of the client authorization"
            types.append(rtype)

    filters: dict[str, list[str]] = {}
    for raw in values.get("_typeFilter", []):
        for text in _FILTER_SPLIT.split(raw):
            text = text.strip()
            if not text:
                continue
            try:
                rtype, query = _check_filter(server, text, types, lenient, issues)
            except FHIRError as exc:
                if not lenient:
                    raise
                issues += [dataclasses.replace(i, severity="warning", diagnostics=f"{i.diagnostics}; this "
                                               "_typeFilter was ignored") for i in exc.issues]
                continue
            if rtype is not None:
                filters.setdefault(rtype, []).append(query)

    patients = _patients(server, principal, kind, group, values.get("patient", []), lenient, issues)
    elements = _elements(server, values.get("_elements", []), types, issues)
    return {"types": types, "since": since, "type_filters": {k: _dedupe(v) for k, v in filters.items()},
            "group": group, "patients": patients, "elements": elements, "output_format": NDJSON,
            "issues": [i.to_fhir() for i in issues]}


def _elements(server: Any, values: list[str], types: list[str], issues: list[Issue]) -> dict[str, list[str]]:
    """``_elements`` per exported type: ``[type].[element]`` for that type, ``[element]`` for every type that
    has it (Bulk Data 2.0). Only root elements; a type none of whose elements were named is exported whole."""
    common, typed = [], {}
    for value in values:
        for text in (t.strip() for t in value.split(",")):
            if not text:
                continue
            head, _, rest = text.partition(".")
            rtype, name = (head, rest) if rest and head[:1].isupper() else (None, text)
            if "." in name or not name:
                raise FHIRError.of(400, "invalid", f"_elements '{text}': only root elements ([type].[element] or "
                                   "[element]) may be named", "_elements")
            if rtype is None:
                common.append(name)
            elif rtype in types:
                typed.setdefault(rtype, []).append(name)
            else:
                issues.append(Issue("warning", "informational", f"_elements '{text}' is for {rtype}, which this "
                                    "export does not include; it was ignored", "_elements"))
    out = {}
    for rtype in types:
        known = _root_elements(server, rtype)
        names = [n for n in (*common, *typed.get(rtype, ())) if n.removesuffix("[x]") in known]
        if names:
            out[rtype] = _dedupe(names)
    named = {n.removesuffix("[x]") for names in out.values() for n in names}
    for name in _dedupe([*common, *(n for names in typed.values() for n in names)]):
        if name.removesuffix("[x]") not in named:
            issues.append(Issue("warning", "informational", f"_elements '{name}' is not an element of any exported "
                                "type; it was ignored", "_elements"))
    return out


def _root_elements(server: Any, rtype: str) -> set[str]:
    """The names of ``rtype``'s root elements (``value[x]`` as ``value``), from its StructureDefinition."""
    definition = server.definitions.structures.get(rtype) or {}
    return {e["path"].split(".")[1].removesuffix("[x]") for e in (definition.get("snapshot") or {}).get("element", [])
            if e["path"].count(".") == 1}


def _patients(server: Any, principal: Principal, kind: str, group: str | None, references: list[str],
              lenient: bool, issues: list[Issue]) -> list[str] | None:
    """The ids named by ``patient`` (Bulk Data 2.0: the export holds only their compartments), or None.

    A patient the principal cannot see, or (Group-level) not an active member of the Group, is a 400
    naming it: the IG asks for an error rather than a silently smaller (or larger) export."""
    if not references:
        return None
    if kind == "system":
        problem = "patient applies to Patient- and Group-level exports only"
        if not lenient:
            raise FHIRError.of(400, "not-supported", problem, "patient")
        issues.append(Issue("warning", "not-supported", f"{problem}; it was ignored", "patient"))
        return None
    try:
        members = set(group_member_ids(server, group)) if kind == "group" and group else None
    except GroupGone as exc:
        raise FHIRError.of(404, "not-found", str(exc)) from None
    ids = []
    for reference in references:
        parsed = parse_reference(reference.strip(), server.indexer.resource_types)
        if parsed is None or parsed[0] != "Patient" or not parsed[1]:
            raise FHIRError.of(400, "invalid", f"patient '{reference}' is not a reference to a Patient", "patient")
        pid = parsed[1]
        stored = server.store.read("Patient", pid)
        if stored is None or stored.deleted or not server.resources.visible(principal, "read", "Patient", pid):
            raise FHIRError.of(400, "not-found", f"patient: Patient/{pid} is not known", "patient")
        if members is not None and pid not in members:
            raise FHIRError.of(400, "invalid", f"patient: Patient/{pid} is not a member of Group/{group}", "patient")
        ids.append(pid)
    return _dedupe(ids)


def group_member_ids(server: Any, group_id: str) -> list[str]:
    """Patient ids of the Group's active ``member.entity`` references, in order."""
    stored = server.store.read("Group", group_id)
    if stored is None or stored.deleted:
        raise GroupGone(f"Group/{group_id} no longer exists")
    group = orjson.loads(stored.body)
    ids = []
    for member in group.get("member") or ():
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        ref = (member.get("entity") or {}).get("reference")
        parsed = parse_reference(ref, server.indexer.resource_types) if isinstance(ref, str) else None
        if parsed is not None and parsed[0] == "Patient" and parsed[1]:
            ids.append(parsed[1])
    return _dedupe(ids)


def _check_filter(server: Any, text: str, types: list[str], lenient: bool,
                  issues: list[Issue]) -> tuple[str | None, str]:
    rtype, sep, query = text.partition("?")
    if not sep or not server.definitions.is_served(rtype):
        raise FHIRError.of(400, "invalid", f"_typeFilter '{text}' must be '[type]?[search parameters]' for a "
                           "served type", "_typeFilter")
    if rtype not in types:
        issues.append(Issue("warning", "informational", f"_typeFilter '{text}' is for {rtype}, which this export "
                            "does not include; it was ignored", "_typeFilter"))
        return None, query
    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise FHIRError.of(400, "invalid", f"_typeFilter '{text}' has no search parameter", "_typeFilter")
    for name, _ in params:
        if name.split(":", 1)[0] in RESULT_PARAMS:
            raise FHIRError.of(400, "invalid", f"_typeFilter '{text}': result parameters such as {name} are not "
                               "allowed", "_typeFilter")
    parsed = server.parser.parse((rtype,), params, strict=not lenient)
    issues += [dataclasses.replace(i, diagnostics=f"_typeFilter '{text}': {i.diagnostics}") for i in parsed.issues]
    return rtype, query


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- the run --------------------------------------------------------------------------------------
class Control(Protocol):
    """What the exporter reports to between pages; raises to stop the run (cancel, lost lease, shutdown)."""

    def page_done(self, progress: str) -> None: ...


class NDJSONWriter:
    """The files of one type: ``<Type>-<n>.ndjson``, a new one when the next line would pass a limit."""

    def __init__(self, directory: Path, rtype: str, max_bytes: int, max_resources: int | None):
        self.directory = directory
        self.rtype = rtype
        self.max_bytes = max_bytes
        self.max_resources = max_resources
        self.files: list[dict[str, Any]] = []
        self.total = 0
        self._file = None
        self._bytes = 0
        self._count = 0

    def _open(self) -> None:
        self._close_current()
        name = f"{self.rtype}-{len(self.files) + 1}.ndjson"
        self._file = open(self.directory / name, "wb", buffering=1 << 20)
        self.files.append({"type": self.rtype, "file": name, "count": 0})
        self._bytes = self._count = 0

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self.files[-1]["count"] = self._count
            self._file = None

    def write(self, bodies: list[bytes]) -> None:
        if not bodies:
            return
        max_bytes, max_resources = self.max_bytes, self.max_resources
        if self._file is not None and (not max_resources or self._count + len(bodies) <= max_resources):
            data = b"\n".join(bodies) + b"\n"
            # the usual case: the page fits in the current file and no body holds a raw newline
            if self._bytes + len(data) <= max_bytes and data.count(b"\n") == len(bodies):
                self._file.write(data)
                self._bytes += len(data)
                self._count += len(bodies)
                self.total += len(bodies)
                return
        lines: list[bytes] = []
        for body in bodies:
            if b"\n" in body:  # never from jsonio.dumps; kept safe for bodies written by other means
                body = jsonio.dumps(jsonio.loads(body))
            size = len(body) + 1
            if self._file is None or (self._count and (self._bytes + size > max_bytes
                                                       or (max_resources and self._count >= max_resources))):
                if lines:
                    self._file.writelines(lines)
                    lines = []
                self._open()
            lines.append(body)
            lines.append(b"\n")
            self._bytes += size
            self._count += 1
            self.total += 1
        if lines:
            self._file.writelines(lines)

    def close(self) -> list[dict[str, Any]]:
        self._close_current()
        return self.files


class CompartmentMatcher:
    """The Patients a resource's compartment parameters point at, from its parsed JSON.

    Uses the indexer's compiled FHIRPath for just those parameters (a full index is ~20x
    slower); falls back to the full index for a type whose expressions do not compile.
    """

    def __init__(self, indexer: Any, registry: Any, compartment: dict[str, list[str]]):
        self.indexer = indexer
        self.registry = registry
        self.compartment = compartment
        self._plans: dict[str, tuple[str, list] | None] = {}

    def _plan(self, rtype: str) -> tuple[str, list] | None:
        if rtype not in self._plans:
            root = rtype if rtype in self.indexer.model.known_types else "Resource"
            fns: list | None = []
            for code in self.compartment.get(rtype, []):
                param = self.registry.get(rtype, code)
                if param is None or not param.expression:
                    continue
                try:
                    fns.append(self.indexer.compiler.compile(param.expression, frozenset({root}))[0])
                except Exception:
                    fns = None
                    break
            self._plans[rtype] = (root, fns) if fns is not None else None
        return self._plans[rtype]

    def patients(self, rtype: str, resource: dict) -> set[str]:
        plan = self._plan(rtype)
        out: set[str] = set()
        if plan is None:
            codes = set(self.compartment.get(rtype, []))
            for entry in self.indexer.index(resource).references:
                if entry.param in codes and entry.target_type == "Patient" and entry.target_id:
                    out.add(entry.target_id)
            return out
        root, fns = plan
        types = self.indexer.resource_types
        node = [(root, resource)]
        for fn in fns:
            for _, value in fn(node):
                ref = value.get("reference") if type(value) is dict else value
                if type(ref) is str:
                    parsed = parse_reference(ref, types)
                    if parsed is not None and parsed[0] == "Patient" and parsed[1]:
                        out.add(parsed[1])
        return out


class GroupGone(Exception):
    """The Group of a Group-level export was deleted before the export ran."""


class Exporter:
    """Runs one job's spec into a directory; the worker owns claiming, files' lifetime and the outcome."""

    def __init__(self, server: Any, settings: Any):
        self.server = server
        self.settings = settings
        engine = server.engine
        self.matcher = CompartmentMatcher(engine.indexer, engine.registry, server.definitions.patient_compartment)

    # .. the whole job ..
    def run(self, job: Any, directory: Path, control: Control) -> dict[str, Any]:
        spec = job.spec
        principal = principal_from_dict(job.principal)
        members = self.members(job.kind, spec)
        output: list[dict[str, Any]] = []
        types = spec["types"]
        for number, rtype in enumerate(types, 1):
            writer = NDJSONWriter(directory, rtype, self.settings.max_file_bytes, self.settings.max_file_resources)
            try:
                elements = (spec.get("elements") or {}).get(rtype)
                for bodies in self.pages(job.kind, rtype, spec, principal, members):
                    writer.write(self._subset(bodies, elements) if elements else bodies)
                    control.page_done(f"{rtype}: {writer.total} resources (type {number} of {len(types)})")
            finally:
                output += writer.close()
        errors = []
        if spec.get("issues"):
            name = "OperationOutcome-1.ndjson"
            with open(directory / name, "wb") as f:
                for issue in spec["issues"]:
                    f.write(jsonio.dumps({"resourceType": "OperationOutcome", "issue": [issue]}) + b"\n")
            errors.append({"type": "OperationOutcome", "file": name, "count": len(spec["issues"])})
        return {"output": output, "error": errors}

    def _subset(self, bodies: list[bytes], elements: list[str]) -> list[bytes]:
        """Each resource reduced to ``elements`` and the mandatory ones, tagged SUBSETTED (``_elements``)."""
        renderer = self.server.renderer
        return [jsonio.dumps(renderer.subset(jsonio.loads(body), None, elements)) for body in bodies]

    def members(self, kind: str, spec: dict) -> list[str] | None:
        """The patients whose compartments the export holds: the Group's members, those named by ``patient``
        (among the members, for a Group), or None for every patient."""
        chosen = spec.get("patients")
        if kind == "group":
            members = group_member_ids(self.server, spec["group"])
            if chosen is None:
                return members
            named = set(chosen)
            return [m for m in members if m in named]
        return chosen if kind == "patient" else None

    # .. one type ..
    def pages(self, kind: str, rtype: str, spec: dict, principal: Principal,
              members: list[str] | None) -> Iterator[list[bytes]]:
        """Pages of body bytes of one type (possibly empty after filtering), each resource once."""
        parser = self.server.parser
        since = parser.parse((rtype,), [("_lastUpdated", "ge" + spec["since"])]).query.clauses \
            if spec.get("since") else []
        filters = [parser.parse((rtype,), parse_qsl(q, keep_blank_values=True)).query.clauses
                   for q in spec.get("type_filters", {}).get(rtype, [])] or [[]]
        links = tuple(self.server.definitions.patient_compartment.get(rtype, ()))
        if members is not None:
            size = self.settings.member_chunk
            chunks: list[list[str] | None] = [members[i:i + size] for i in range(0, len(members or ()), size)]
            chunk_of = {pid: n for n, chunk in enumerate(chunks) for pid in chunk} if len(chunks) > 1 else {}
        else:
            chunks, chunk_of = [None], {}
        check_compartment = kind == "patient" and rtype != "Patient" and members is None
        for number, chunk in enumerate(chunks):
            scope = self._member_clause(rtype, links, chunk) if chunk is not None else []
            for index, clauses in enumerate(filters):
                query = self.server.search.constrained(principal, Query(types=(rtype,),
                                                                         clauses=[*clauses, *since, *scope]))
                for resources in self._paged(query):
                    if index:
                        resources = self._not_in_earlier(principal, rtype, resources, filters[:index])
                    if check_compartment or (chunk_of and rtype != "Patient"):
                        resources = self._in_compartment(rtype, resources, chunk_of, number)
                    yield [r.body for r in resources]  # even when empty: the worker checks in after every page

    @staticmethod
    def _member_clause(rtype: str, links: tuple[str, ...], chunk: list[str]) -> list:
        if rtype == "Patient":
            return [Clause("_id", "token", None, tuple(TokenValue(None, pid, False) for pid in chunk))]
        # one single-value clause per (parameter, member), ORed: each is an exact index lookup in either
        # store (a clause with many values makes SQLite test every value against every reference row)
        clauses = tuple(Clause(p, "reference", None, (ReferenceValue("Patient", pid),)) for p in links for pid in chunk)
        return [clauses[0] if len(clauses) == 1 else AnyOf(clauses)]

    def _paged(self, query: Query) -> Iterator[list]:
        """Keyset pages of a query. A page holds at most ``page_size`` resources and about ``page_bytes``:
        the count adapts to the sizes seen so far, starting small (a type of large Binaries stays bounded)."""
        settings = self.settings
        cursor, count = None, min(settings.page_size, FIRST_PAGE)
        while True:
            page = self.server.store.search(query, count=count, cursor=cursor)
            yield page.resources
            if page.next_cursor is None or not page.resources:
                return
            cursor = page.next_cursor
            average = sum(len(r.body) for r in page.resources) / len(page.resources)
            count = max(1, min(settings.page_size, int(settings.page_bytes / max(average, 1.0))))

    def _not_in_earlier(self, principal: Principal, rtype: str, resources: list, earlier: list[list]) -> list:
        """Drop resources an earlier ``_typeFilter`` of the type already exported (filters are ORed)."""
        if not resources:
            return resources
        ids = Clause("_id", "token", None, tuple(TokenValue(None, r.id, False) for r in resources))
        seen: set[str] = set()
        for clauses in earlier:
            query = self.server.search.constrained(principal, Query(types=(rtype,), clauses=[*clauses, ids]))
            seen.update(r.id for r in self.server.store.search(query, count=len(resources)).resources)
        return [r for r in resources if r.id not in seen] if seen else resources

    def _in_compartment(self, rtype: str, resources: list, chunk_of: dict[str, int], number: int) -> list:
        """Patient level: keep resources linked to some Patient. Group level with several member chunks:
        keep a resource only in the first chunk holding one of its patients, so it is written once."""
        kept = []
        for resource in resources:
            patients = self.matcher.patients(rtype, orjson.loads(resource.body))
            if not chunk_of:
                if patients:
                    kept.append(resource)
                continue
            first = min((chunk_of[p] for p in patients if p in chunk_of), default=number)
            if first == number:
                kept.append(resource)
        return kept
