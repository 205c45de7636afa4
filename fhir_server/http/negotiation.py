"""Content negotiation and request bodies: JSON only, and said clearly when asked for anything else."""
from __future__ import annotations

from typing import Any

from flask import Request

from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
#: PATCH bodies: JSON Patch (an array), JSON Merge Patch (an object), or plain JSON holding either
PATCH_TYPES = JSON_TYPES | {JSON_PATCH, MERGE_PATCH}
FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": FHIR_JSON, "application/fhir+json": FHIR_JSON,
                  "application/json+fhir": FHIR_JSON, "text/json": FHIR_JSON}
XML_TYPES = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}


def response_type(request: Request) -> str:
    """The media type to answer with, from ``_format`` or Accept; 406 for XML or anything not JSON."""
    fmt = request.args.get("_format")
    if fmt:
        fmt = fmt.split(";")[0].strip()
        if fmt in FORMAT_ALIASES:
            return FORMAT_ALIASES[fmt]
        raise FHIRError.of(406, "not-supported", f"_format '{fmt}' is not supported; this server speaks "
                           "application/fhir+json", "_format")
    header = request.headers.get("Accept")
    if not header:
        return FHIR_JSON
    known = _ACCEPTED.get(header)
    if known is not None:
        return known
    answer = _negotiate(request)
    if len(_ACCEPTED) < 256:  # the few Accept headers clients send: parsed once per process
        _ACCEPTED[header] = answer
    return answer


_ACCEPTED: dict[str, str] = {}  # Accept header -> the media type it negotiated (headers that negotiate one)


def _negotiate(request: Request) -> str:
    accept = request.accept_mimetypes
    if not accept or accept.provided is False:
        return FHIR_JSON
    best = accept.best_match([FHIR_JSON, "application/json", "application/json+fhir"])
    if best:
        return FHIR_JSON if best != "application/json" else "application/json"
    if any(mime in ("*/*", "application/*") for mime, _ in accept):
        return FHIR_JSON
    raise FHIRError.of(406, "not-supported", f"Cannot answer in {request.headers.get('Accept')}; this server "
                       "speaks application/fhir+json")


def read_json(request: Request, *, patch: bool = False) -> Any:
    """The parsed body; 415 for a media type that is not JSON, 400 for malformed JSON."""
    mime = (request.mimetype or "").lower()
    allowed = PATCH_TYPES if patch else JSON_TYPES
    if mime not in allowed:
        if mime in XML_TYPES:
            raise FHIRError.of(415, "not-supported", "XML is not supported; send application/fhir+json")
        raise FHIRError.of(415, "not-supported", f"Unsupported Content-Type '{request.content_type}'; "
                           f"send {f'{JSON_PATCH} or {MERGE_PATCH}' if patch else FHIR_JSON}")
    data = request.get_data(cache=True)
    if not data.strip():
        raise FHIRError.of(400, "structure", "The request body is empty")
    try:
        return jsonio.loads(data)
    except jsonio.JSONError as exc:
        raise FHIRError.of(400, "structure", f"The body is not valid JSON: {exc}") from None


def read_patch(request: Request) -> list | dict:
    """A PATCH body: a JSON Patch (an array of operations) or a JSON Merge Patch (an object), each under its
    own media type or plain JSON; a FHIRPath Patch (a Parameters resource) is 415."""
    body = read_json(request, patch=True)
    mime = (request.mimetype or "").lower()
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        raise FHIRError.of(415, "not-supported", "FHIRPath Patch (a Parameters body) is not supported: send a "
                           f"JSON Patch ({JSON_PATCH}) or a JSON Merge Patch ({MERGE_PATCH})")
    if mime == JSON_PATCH and not isinstance(body, list):
        raise FHIRError.of(400, "structure", "A JSON Patch body must be an array of operations (RFC 6902)")
    if mime == MERGE_PATCH and not isinstance(body, dict):
        raise FHIRError.of(400, "structure", "A JSON Merge Patch body must be an object (RFC 7386)")
    if not isinstance(body, (list, dict)):
        raise FHIRError.of(400, "structure", "A PATCH body is a JSON Patch (an array) or a JSON Merge Patch "
                           "(an object)")
    return body
