"""What a Subscription must be for this server to run it, and what it becomes once accepted.

:func:`problems` lists what is wrong with a Subscription (criteria, channel, end); :func:`definition`
turns a stored Subscription into the :class:`Definition` the matcher and the delivery worker use.
:class:`SubscriptionValidator` wraps the server's validator so that every write path (REST
create/update/patch, conditional writes, Bundles, ``fhir-server load``, ``$validate``) refuses a
Subscription this server cannot run, with a 400 OperationOutcome naming the faulty element, and
activates the accepted ones (see docs/adr/0007-subscriptions.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from fhir_server.model.outcome import FHIRError, Issue
from fhir_server.search.parse import RESULT_PARAMETERS
from fhir_server.search.query import Query
from fhir_server.subscriptions.endpoints import EndpointPolicy

if TYPE_CHECKING:  # pragma: no cover
    from fhir_server.access.gate import Principal
    from fhir_server.search.parse import SearchParser

TYPE = "Subscription"
#: statuses under which notifications are sent (``error`` keeps trying: a success turns it back to active)
DELIVERED = frozenset({"active", "error"})
#: the server-managed tag recording who last defined the subscription (client id, else subject)
OWNER_SYSTEM = "https://dmp.example.org/fhir/CodeSystem/subscription-owner"
JSON_PAYLOADS = frozenset({"application/fhir+json", "application/json"})
_HEADER = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*)")
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})


@dataclass(frozen=True)
class Definition:
    """An accepted Subscription, as the matcher and the delivery worker need it."""

    id: str
    version: int
    status: str
    rtype: str  # the criteria's resource type
    criteria: str
    query: Query  # the criteria's clauses (types = (rtype,))
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    payload: str | None  # None: empty notification; else the mime type of the resource sent
    end: datetime | None
    owner: str | None = None  # the owner tag's code: the client (or user) that subscribed

    def expired(self, now: datetime | None = None) -> bool:
        return self.end is not None and self.end <= (now or datetime.now(timezone.utc))

    @property
    def channel(self) -> tuple:
        """What a notification depends on: a delivery prepared for another channel is dropped."""
        return self.endpoint, self.headers, self.payload


def parse_instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def parse_criteria(parser: "SearchParser", criteria: Any) -> Query:
    """``Type?params`` (or ``Type``: every resource of the type) as a strict search query; ValueError when the
    type is not served, a parameter is unknown or malformed, or a result parameter (_sort, _count...) is used."""
    if not isinstance(criteria, str) or not criteria.strip():
        raise ValueError("criteria is required: a search such as 'Observation?code=http://loinc.org|2345-7'")
    rtype, _, query = criteria.strip().partition("?")
    if "/" in rtype or not rtype:
        raise ValueError(f"criteria must be relative, '[type]?[search parameters]', not '{criteria}'")
    if rtype not in parser.served:
        raise ValueError(f"criteria names the resource type '{rtype}', which this server does not serve")
    params = parse_qsl(query, keep_blank_values=True)
    results = sorted({name for name, _ in params if name.split(":")[0] in RESULT_PARAMETERS})
    if results:
        raise ValueError(f"criteria may not use {', '.join(results)}: a subscription's criteria say which "
                         "resources match, not how to page, sort or shape them")
    try:
        parsed = parser.parse((rtype,), params, strict=True)
    except FHIRError as exc:
        raise ValueError("; ".join(i.diagnostics for i in exc.issues)) from None
    return parsed.query


def problems(resource: dict, parser: "SearchParser", endpoints: EndpointPolicy | None = None) -> list[Issue]:
    """What stops this server from running the Subscription (errors with their element); with ``endpoints``,
    an endpoint this server may not send to as well."""
    issues: list[Issue] = []

    def error(expression: str, message: str, code: str = "invalid") -> None:
        issues.append(Issue("error", code, message, expression))

    try:
        parse_criteria(parser, resource.get("criteria"))
    except ValueError as exc:
        error("Subscription.criteria", f"Invalid criteria: {exc}")
    channel = resource.get("channel") if isinstance(resource.get("channel"), dict) else {}
    kind = channel.get("type")
    if kind != "rest-hook":
        error("Subscription.channel.type", f"Channel type '{kind}' is not supported: this server only delivers "
              "rest-hook notifications (websocket, email, sms and message are not offered)", "not-supported")
    else:
        endpoint = channel.get("endpoint")
        parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            error("Subscription.channel.endpoint", "A rest-hook channel needs an absolute http or https endpoint URL")
        elif parts.fragment or parts.username or parts.password:
            error("Subscription.channel.endpoint", "The endpoint URL may not carry credentials or a fragment; send "
                  "credentials in channel.header")
        elif endpoints is not None and (reason := endpoints.refusal(endpoint)) is not None:
            error("Subscription.channel.endpoint", reason, "business-rule")
    payload = channel.get("payload")
    if payload is not None and mime(payload) not in JSON_PAYLOADS:
        error("Subscription.channel.payload", f"Payload '{payload}' is not supported: leave it out for empty "
              "notifications, or use application/fhir+json to receive the resource", "not-supported")
    for n, header in enumerate(channel.get("header") or ()):
        match = _HEADER.fullmatch(header) if isinstance(header, str) else None
        if match is None:
            error(f"Subscription.channel.header[{n}]", "A channel header must be 'Name: value' on one line")
        elif match.group(1).lower() in _RESERVED_HEADERS:
            error(f"Subscription.channel.header[{n}]", f"The {match.group(1)} header is set by the server")
    end = resource.get("end")
    if isinstance(end, str) and resource.get("status") in ("requested", "active"):
        try:
            if parse_instant(end) <= datetime.now(timezone.utc):
                error("Subscription.end", "Subscription.end is in the past: this subscription would never notify")
        except ValueError:
            pass  # the structural validation reports a malformed instant
    return issues


def mime(payload: str) -> str:
    return payload.split(";", 1)[0].strip().lower()


def definition(rid: str, version: int, resource: dict, parser: "SearchParser") -> Definition:
    """The runnable form of a stored Subscription; ValueError when it cannot run (e.g. its criteria use a
    custom search parameter that was withdrawn since)."""
    issues = problems(dict(resource, end=None), parser)
    if issues:
        raise ValueError("; ".join(i.diagnostics for i in issues))
    channel = resource["channel"]
    headers = tuple((m.group(1), m.group(2).strip()) for m in (_HEADER.fullmatch(h) for h in channel.get("header") or ()))
    end = resource.get("end")
    query = parse_criteria(parser, resource["criteria"])
    owner = next((t.get("code") for t in (resource.get("meta") or {}).get("tag") or ()
                  if isinstance(t, dict) and t.get("system") == OWNER_SYSTEM), None)
    return Definition(rid, version, resource.get("status", ""), query.types[0], resource["criteria"].strip(), query,
                      channel["endpoint"], headers,
                      mime(channel["payload"]) if channel.get("payload") is not None else None,
                      parse_instant(end) if isinstance(end, str) else None, owner)


def owner_of(principal: "Principal") -> str:
    return principal.client_id or principal.subject


class SubscriptionValidator:
    """A validator of the server's services, plus the Subscription checks and (for writes) activation.

    For a structurally valid Subscription: :func:`problems` become error issues (the write answers 400
    and stores nothing); then, during a request, the principal must be allowed to search the criteria's
    type without limits of its own (403 otherwise: see the ADR); an accepted ``requested`` subscription
    is activated in place (``status: active``, ``error`` removed) and the owner tag is set, so the
    version stored is the active one. Outside a request (``fhir-server load``, ``$import``) the writer
    is unknown here: the subscription is stored ``off``, to be re-requested through the API.
    """

    def __init__(self, inner: Any, server: Any, *, activate: bool = True) -> None:
        self.inner = inner
        self.server = server
        self.activate = activate  # False: checks only (``$validate``: nothing is written, nothing changes)

    def validate(self, resource: Any) -> list[Issue]:
        issues = self.inner.validate(resource)
        if (isinstance(resource, dict) and resource.get("resourceType") == TYPE
                and not any(i.severity in ("error", "fatal") for i in issues)):
            found = problems(resource, self.server.parser, self.server.subscriptions.endpoints)
            if found:
                return found + issues
            if self.activate:
                self.accept(resource)
        return issues

    def accept(self, resource: dict) -> None:
        principal = current_principal()
        meta = dict(resource.get("meta") or {})
        tags = [t for t in meta.get("tag") or () if not (isinstance(t, dict) and t.get("system") == OWNER_SYSTEM)]
        if principal is None:
            # outside a request (fhir-server load, $import): who asked is unknown here, so nothing vouches
            # that they may receive what it would send: stored off until a client re-requests it
            if resource.get("status") in DELIVERED or resource.get("status") == "requested":
                resource["status"] = "off"
                resource["error"] = ("Written outside the REST API (load or $import): set status to 'requested' "
                                     "through the API to activate it")
        else:
            rtype = resource["criteria"].strip().partition("?")[0]
            self.server.subscriptions.check_owner(principal, rtype)
            if resource.get("status") == "requested":
                resource["status"] = "active"
                resource.pop("error", None)
            tags.append({"system": OWNER_SYSTEM, "code": owner_of(principal)})
        if tags:
            meta["tag"] = tags
        else:
            meta.pop("tag", None)
        if meta:
            resource["meta"] = meta
        else:
            resource.pop("meta", None)

    def __getattr__(self, name: str) -> Any:  # everything else the wrapped validator offers
        if name in ("inner", "server", "activate"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def current_principal() -> "Principal | None":
    """The principal of the request being served, None outside a request (command line)."""
    from flask import g, has_request_context
    return g.get("principal") if has_request_context() else None
