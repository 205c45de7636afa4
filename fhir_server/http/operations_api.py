"""The R4 operations at ``/fhir``: ``$validate``, ``$meta``, ``$meta-add``, ``$meta-delete``, ``$everything``.

Thin handlers over :class:`~fhir_server.services.operations.OperationService`
(``fhir().operations``): they read parameters from the URL, a form or a ``Parameters``
body and shape the response. Statuses: ``$validate`` answers 200 with the
OperationOutcome of every validation it could carry out (errors included) and 400 only
for a request it cannot use; the ``$meta`` family answers ``Parameters`` (200), 404/410
for unknown/deleted instances; ``$everything`` answers a searchset Bundle.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, g, request

from fhir_server.http.negotiation import JSON_TYPES, read_json
from fhir_server.http.rendering import version_headers
from fhir_server.http.responses import base_url, fhir, respond
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError, Issue, bad_request, operation_outcome
from fhir_server.services.operations import EVERYTHING_DEFAULT_COUNT, EverythingPage, meta_of, meta_parameters

operations_api = Blueprint("operations_api", __name__)

TYPE = "<type:rtype>"
ID = "<string(minlength=1):rid>"
EVERYTHING_PARAMS = ("_since", "_type", "_count", "_page", "start", "end")
IGNORED_PARAMS = ("_format", "_pretty")


def _operations() -> Any:
    return fhir().operations


# -- $validate ----------------------------------------------------------------------------------
@operations_api.post(f"/{TYPE}/$validate")
@operations_api.post(f"/{TYPE}/{ID}/$validate")
def validate(rtype: str, rid: str | None = None) -> Response:
    """200 with the outcome of the validation (errors included); 400 only for an unusable request."""
    body = read_json(request) if request.get_data(cache=True).strip() else None
    issues = _operations().validate(g.principal, rtype, rid, body, mode=request.args.get("mode"),
                                    profiles=tuple(request.args.getlist("profile")))
    return respond(operation_outcome(issues), 200)


# -- $meta, $meta-add, $meta-delete -------------------------------------------------------------
@operations_api.route("/$meta", methods=["GET", "POST"])
def meta_system() -> Response:
    return respond(meta_parameters(_operations().meta_in_use(g.principal, None)))


@operations_api.route(f"/{TYPE}/$meta", methods=["GET", "POST"])
def meta_type(rtype: str) -> Response:
    return respond(meta_parameters(_operations().meta_in_use(g.principal, rtype)))


@operations_api.route(f"/{TYPE}/{ID}/$meta", methods=["GET", "POST"])
@operations_api.route(f"/{TYPE}/{ID}/_history/<string:vid>/$meta", methods=["GET", "POST"])
def meta_instance(rtype: str, rid: str, vid: str | None = None) -> Response:
    return respond(meta_parameters(_operations().meta(g.principal, rtype, rid, vid)))


@operations_api.post(f"/{TYPE}/{ID}/$meta-add")
def meta_add(rtype: str, rid: str) -> Response:
    return _meta_change(rtype, rid, add=True)


@operations_api.post(f"/{TYPE}/{ID}/$meta-delete")
def meta_delete(rtype: str, rid: str) -> Response:
    return _meta_change(rtype, rid, add=False)


def _meta_change(rtype: str, rid: str, *, add: bool) -> Response:
    """The resulting Meta, with the ETag of the version written (see OperationService.meta_change)."""
    stored = _operations().meta_change(g.principal, rtype, rid, read_json(request), add=add)
    return respond(meta_parameters(meta_of(stored)), 200, version_headers(stored))


# -- Patient/$everything ------------------------------------------------------------------------
@operations_api.route(f"/Patient/{ID}/$everything", methods=["GET", "POST"])
def everything_instance(rid: str) -> Response:
    return _everything(rid)


@operations_api.route("/Patient/$everything", methods=["GET", "POST"])
def everything_type() -> Response:
    return _everything(None)


def _everything(patient: str | None) -> Response:
    params = _everything_params()
    since = _since(params)
    types = None
    type_values = [v for k, v in params if k == "_type"]
    if type_values:
        types = tuple(dict.fromkeys(t.strip() for v in type_values for t in v.split(",") if t.strip()))
    count_text = _single(params, "_count")
    count = EVERYTHING_DEFAULT_COUNT
    if count_text is not None:
        if not count_text.isdigit() or int(count_text) < 1:
            raise bad_request("_count must be a positive integer", "_count")
        count = int(count_text)
    care = (_date(params, "start", 0), _date(params, "end", 1))
    page = _operations().everything(g.principal, patient, since=since, types=types, count=count,
                                    page=_single(params, "_page"), care=care if care != (None, None) else None)
    unused = sorted({k for k, _ in params if k not in EVERYTHING_PARAMS and k not in IGNORED_PARAMS})
    return respond(_everything_bundle(page, params, unused))


def _everything_params() -> list[tuple[str, str]]:
    """The operation's parameters: URL, plus a form or a Parameters body on POST."""
    params = [(k, v) for k, v in request.args.items(multi=True)]
    if request.method != "POST" or not request.get_data(cache=True).strip():
        return params
    if request.mimetype == "application/x-www-form-urlencoded":
        return params + list(request.form.items(multi=True))
    if (request.mimetype or "").lower() not in JSON_TYPES:
        raise FHIRError.of(415, "not-supported", "POST $everything takes a Parameters resource "
                           "(application/fhir+json) or a form")
    body = read_json(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The body of POST $everything must be a Parameters resource", code="structure")
    for index, parameter in enumerate(body.get("parameter") or []):
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise bad_request("Each parameter needs a name", f"Parameters.parameter[{index}]", code="structure")
        values = [v for k, v in parameter.items() if k.startswith("value")]
        if len(values) != 1 or isinstance(values[0], (dict, list)):
            raise bad_request(f"Parameter '{parameter['name']}' needs one primitive value",
                              f"Parameters.parameter[{index}]")
        value = values[0]
        params.append((parameter["name"], jsonio.dumps(value).decode() if not isinstance(value, str) else value))
    return params


def _single(params: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise bad_request(f"{name} may be given once", name)
    return values[0] if values else None


def _since(params: list[tuple[str, str]]) -> int | None:
    value = _single(params, "_since")
    if value is None:
        return None
    from fhir_server.model.dates import parse_range
    try:
        return parse_range(value)[0]
    except ValueError:
        raise bad_request(f"_since must be a FHIR instant, not '{value}'", "_since") from None


def _date(params: list[tuple[str, str]], name: str, bound: int) -> int | None:
    """``start`` (the first µs of its date) or ``end`` (the last µs of its date), or None."""
    value = _single(params, name)
    if value is None:
        return None
    from fhir_server.model.dates import parse_range
    try:
        return parse_range(value)[bound]
    except ValueError:
        raise bad_request(f"{name} must be a FHIR date, not '{value}'", name) from None


def _everything_bundle(page: EverythingPage, params: list[tuple[str, str]], unused: list[str]) -> dict:
    base = base_url()
    root = base.rsplit("/fhir", 1)[0] if "/fhir" in base else base
    url = root + request.path
    kept = [(k, v) for k, v in params if k in ("_since", "_type", "_count", "start", "end")]
    self_params = kept + [(k, v) for k, v in params if k == "_page"]
    links = [{"relation": "self", "url": url + ("?" + urlencode(self_params) if self_params else "")}]
    if page.next_page:
        links.append({"relation": "next", "url": url + "?" + urlencode([*kept, ("_page", page.next_page)])})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    entries = []
    for mode, resources in (("match", page.matches), ("include", page.included)):
        for stored in resources:
            entries.append({"fullUrl": f"{base}/{stored.type}/{stored.id}", "resource": jsonio.loads(stored.body),
                            "search": {"mode": mode}})
    issues = list(page.issues)
    if unused:
        issues.append(Issue("warning", "not-supported", "Parameters not supported here, ignored: "
                            + ", ".join(unused)))
    if issues:
        entries.append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle
