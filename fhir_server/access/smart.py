"""The SMART on FHIR access gate: bearer tokens verified here, scopes enforced as query clauses.

Authentication (``principal``): the ``Authorization: Bearer`` token is verified by
:class:`~fhir_server.access.tokens.TokenVerifier` (signature against the authorization server's
JWKS, ``exp``, ``aud`` = the FHIR base URL, ``iss``, revocation). No token: 401 with
``WWW-Authenticate: Bearer realm="fhir"``; a bad one: 401 with ``error="invalid_token"``; both with
an OperationOutcome.

Authorization: each interaction needs one SMART permission on its resource type:

=================================================================  ==========
read, vread, history-instance, $meta                               ``r``
search (type, system, compartment), history-type, history-system,  ``s``
``$everything``, ``$export``, ``_include``/``_revinclude``, chain
and ``_has`` targets
create                                                             ``c``
update, patch, ``$meta-add``/``$meta-delete``                      ``u``
delete                                                             ``d``
``$validate``                                                      ``c`` or ``u``
=================================================================  ==========

(v1 ``read`` = ``rs``, ``write`` = ``cud``, ``*`` = ``cruds``; type ``*`` = every type.) A type the
token has no such scope for is 403 (``error="insufficient_scope"``). ``$validate`` stores nothing
and reads nothing of the record (its mode=update/delete existence checks only see what the token
may see), so the right to write the type is enough.

What a granted scope lets the principal reach becomes search clauses (``constrain``), ANDed into
every query of the type, so counts, paging, includes, chains and ``_has`` obey them; reads and
writes check membership with one constrained ``_id`` query (see the services):

* ``patient/`` scopes need the token's ``patient`` claim (without it they grant nothing). A type of
  the Patient compartment is limited to the resources linked to that patient by one of the
  compartment's parameters (``definitions.patient_compartment``); ``Patient`` itself to
  ``_id`` = the patient. Types outside the compartment that hold no patient data
  (:data:`PATIENT_REFERENCE_TYPES`: Medication, Organization, Practitioner, PractitionerRole,
  SearchParameter) can be read and searched without limit (the app needs them to resolve
  references), not written; every other type outside the compartment (Binary, Subscription, any
  type added later) is refused to ``patient/`` scopes (403): default deny.
* ``user/`` scopes: the scope adds no limit; what the *user* may see is the record's rule,
  :meth:`SmartGate.user_scope_rules` (the hook the consent issue replaces). Until then it keeps a
  patient account's ``user/`` scopes to its own compartment (``fhirUser`` = Patient/x) and gives a
  related person's ``user/`` scopes nothing (their access goes through ``patient/`` scopes bound
  to the minor's record).
* ``system/`` scopes (backend services): no limit; ignored on tokens of patient or related-person
  accounts.
* granular v2 scopes (``patient/Observation.rs?category=laboratory``): the query's clauses are
  ANDed with the context's limit; a scope whose query is not a valid search of the type (strict
  parsing) grants nothing for that type.
* several scopes granting the same permission on a type: the union of what each allows (ORed;
  written as a conjunction of ``AnyOf`` clauses).
"""
from __future__ import annotations

import itertools
import re
import threading
from typing import Any, Callable, Iterable

from fhir_server.access.gate import NOTHING, AccessGate, Principal, id_clause
from fhir_server.access.scopes import Scope, parse_scopes, split_scopes
from fhir_server.access.tokens import InvalidToken, KeySource, KeysUnavailable, TokenVerifier
from fhir_server.model.outcome import FHIRError
from fhir_server.search.query import AnyOf, Clause, ReferenceValue

PERMISSION_OF = {
    "read": "r", "vread": "r", "history-instance": "r",
    "search": "s", "history": "s", "history-type": "s", "history-system": "s", "everything": "s", "export": "s",
    "create": "c", "update": "u", "patch": "u", "delete": "d",
}
ANY_WRITE = frozenset("cu")  # $validate
# outside the Patient compartment, holding no patient data: open to patient/ scopes that name them
PATIENT_REFERENCE_TYPES = frozenset({"Medication", "Organization", "Practitioner", "PractitionerRole",
                                     "SearchParameter"})
MAX_UNION_CLAUSES = 64  # OR of several granular scopes, written as AND of ORs: at most this many clauses
REALM = "fhir"
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_CACHE_SIZE = 4096


def _www_authenticate(error: str | None = None, description: str | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error:
        value += f', error="{error}"'
    if description:
        value += ', error_description="' + description.replace('"', "'").replace("\\", "/") + '"'
    return {"WWW-Authenticate": value}


def unauthorized(message: str, error: str | None = None, code: str = "login") -> FHIRError:
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750 §3) and an OperationOutcome."""
    return FHIRError.of(401, code, message, headers=_www_authenticate(error, message if error else None))


def insufficient_scope(message: str) -> FHIRError:
    return FHIRError.of(403, "forbidden", message, headers=_www_authenticate("insufficient_scope"))


def union(conjunctions: list[list]) -> list:
    """The clauses (ANDed) of ``OR`` over ``conjunctions`` (each a list of ANDed clauses): common
    clauses factored out, the rest distributed into ``AnyOf`` clauses. ``[]`` = no limit."""
    if not conjunctions or any(not c for c in conjunctions):
        return []
    common = [c for c in conjunctions[0] if all(c in other for other in conjunctions[1:])]
    rests: list[list] = []
    for conjunction in conjunctions:
        rest = [c for c in conjunction if c not in common]
        if not rest:
            return common  # this scope allows all of what the common part allows
        if rest not in rests:
            rests.append(rest)
    if len(rests) == 1:
        return common + rests[0]
    size = 1
    for rest in rests:
        size *= len(rest)
    if size > MAX_UNION_CLAUSES:
        raise FHIRError.of(403, "too-costly", "The granular scopes of this token on one resource type are too "
                           "many to combine; ask for fewer")
    out = list(common)
    for combination in itertools.product(*rests):
        members: list = []
        for clause in combination:
            for member in (clause.clauses if isinstance(clause, AnyOf) else (clause,)):
                if member not in members:
                    members.append(member)
        clause = members[0] if len(members) == 1 else AnyOf(tuple(members))
        if clause not in out:
            out.append(clause)
    return out


class SmartGate(AccessGate):
    """The gate of a server protected by SMART on FHIR access tokens (see the module docstring)."""

    def __init__(self, verifier: TokenVerifier):
        self.verifier = verifier
        self.server: Any = None  # the FHIRServer (definitions, search parser), set by attach()
        self._lock = threading.Lock()
        self._limits: dict[tuple, list] = {}

    def attach(self, server: Any) -> None:
        self.server = server

    # -- authentication ----------------------------------------------------------------------
    def principal(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.strip():
            raise unauthorized("Authentication is required: send an access token of the SMART authorization "
                               "server as 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Only bearer access tokens are accepted: 'Authorization: Bearer <token>'",
                               "invalid_request")
        try:
            claims = self.verifier.verify(token.strip())
        except InvalidToken as exc:
            message = str(exc)
            raise unauthorized(f"The access token is not valid: {message}", "invalid_token",
                               "expired" if "expired" in message else "login") from None
        except KeysUnavailable:
            raise FHIRError.of(503, "transient", "Access tokens cannot be verified right now (the authorization "
                               "server's keys are unavailable); try again later") from None
        return self.principal_of(claims)

    @staticmethod
    def principal_of(claims: dict) -> Principal:
        """The principal a verified token's claims describe (docs/adr/0005-access-tokens.md)."""
        def text(name: str) -> str | None:
            value = claims.get(name)
            return value if isinstance(value, str) and value else None
        patient = text("patient")
        if patient is not None and not _ID.fullmatch(patient):
            patient = None
        return Principal(subject=text("sub") or text("client_id") or "unknown",
                         scopes=split_scopes(claims.get("scope") if isinstance(claims.get("scope"), str) else None),
                         patient=patient, authenticated=True, fhir_user=text("fhirUser"),
                         client_id=text("client_id"), role=text("role"))

    # -- which scopes count --------------------------------------------------------------------
    def effective(self, principal: Principal) -> tuple[Scope, ...]:
        """The clinical scopes of the token that can grant anything to this principal."""
        out = []
        for scope in parse_scopes(principal.scopes):
            if scope.context == "patient" and not principal.patient:
                continue  # patient/ scopes mean "for the token's patient": none named, nothing granted
            if scope.context == "system" and principal.role in ("patient", "related-person"):
                continue
            if scope.context == "user" and not self.user_scopes_allowed(principal):
                continue
            out.append(scope)
        return tuple(out)

    # -- authorization -------------------------------------------------------------------------
    def authorize(self, principal: Principal, interaction: str, rtype: str | None,
                  resource: dict | None = None) -> None:
        needed = ANY_WRITE if interaction == "validate" else frozenset(PERMISSION_OF.get(interaction, ""))
        if not needed:
            raise insufficient_scope(f"The {interaction} interaction is not available to access tokens")
        scopes = self.effective(principal)
        if rtype is None:
            if interaction == "export":  # "every type the client may export": checked type by type
                granted = any(p in s.permissions for s in scopes for p in needed)
            else:
                granted = any(s.grants(p, None) for s in scopes for p in needed)
        else:
            granted = any(s.grants(p, rtype) and self.reach(principal, s, rtype, p) is not None
                          for s in scopes for p in needed)
        if not granted:
            letters = "".join(p for p in "cruds" if p in needed)
            what = f"on {rtype}" if rtype else "on every resource type (a '*' scope)"
            hint = "" if principal.patient or not any(s.context == "patient" for s in parse_scopes(
                principal.scopes)) else "; its patient/ scopes grant nothing without a patient in the token"
            raise insufficient_scope(f"This access token has no scope granting '{letters}' {what}, needed for "
                                     f"{interaction}{hint}")

    def constrain(self, principal: Principal, rtype: str | None) -> list:
        return self.limits(principal, rtype, "search")

    def limits(self, principal: Principal, rtype: str | None, interaction: str = "search") -> list:
        return [*self.token_limits(principal, rtype, interaction), *self.standing_limits(rtype, interaction)]

    def token_limits(self, principal: Principal, rtype: str | None, interaction: str = "search") -> list:
        """What the token (its scopes, and the record's rules for its user) lets the principal reach."""
        permission = PERMISSION_OF.get(interaction, "s")
        if rtype is None:
            types = sorted(self.server.definitions.served) if self.server is not None else []
            limits = [self.token_limits(principal, t, interaction) for t in types]
            if limits and any(limit != limits[0] for limit in limits):
                raise FHIRError.of(403, "forbidden", "This access token limits resource types differently; name "
                                   "the resource type to search")
            return limits[0] if limits else [NOTHING]
        version = getattr(getattr(getattr(self.server, "engine", None), "registry", None), "version", 0)
        key = (principal.scopes, principal.patient, principal.role, principal.fhir_user, principal.relations, rtype,
               permission, version)
        limit = self._limits.get(key)
        if limit is None:
            limit = self._compute(principal, rtype, permission)
            with self._lock:
                if len(self._limits) >= _CACHE_SIZE:
                    self._limits.clear()
                self._limits[key] = limit
        return list(limit)

    def _compute(self, principal: Principal, rtype: str, permission: str) -> list:
        conjunctions: list[list] = []
        for scope in self.effective(principal):
            if not scope.grants(permission, rtype):
                continue
            limit = self.reach(principal, scope, rtype, permission)
            if limit is None:
                continue
            if scope.query:
                clauses = self.scope_query(scope, rtype)
                if clauses is None:
                    continue
                limit = [*limit, *(c for c in clauses if c not in limit)]
            conjunctions.append(limit)
        if not conjunctions:
            return [NOTHING]
        return union(conjunctions)

    def reach(self, principal: Principal, scope: Scope, rtype: str, permission: str) -> list | None:
        """What one scope's context lets the principal reach of ``rtype`` (before its granular query):
        clauses, [] for no limit, None for nothing."""
        if scope.context == "patient":
            return self.compartment(rtype, principal.patient, permission)
        if scope.context == "user":
            return self.user_scope_rules(principal, rtype, permission)
        return []

    def compartment(self, rtype: str, patient: str | None, permission: str = "r") -> list | None:
        """The clauses keeping ``rtype`` to ``patient``'s compartment; [] for reference data types (read and
        search only: a patient's app does not write the directory), None for a type a patient-bound scope
        cannot reach."""
        if not patient:
            return None
        if rtype == "Patient":
            return [id_clause([patient])]
        params = self.server.definitions.patient_compartment.get(rtype) if self.server is not None else None
        if params:
            value = (ReferenceValue("Patient", patient),)
            clauses = tuple(Clause(p, "reference", None, value) for p in params)
            return [clauses[0] if len(clauses) == 1 else AnyOf(clauses)]
        if rtype in PATIENT_REFERENCE_TYPES and permission in ("r", "s"):
            return []
        return None

    def user_scopes_allowed(self, principal: Principal) -> bool:
        """Part of the hook below: whether ``user/`` scopes can grant this principal anything at all."""
        if principal.role == "related-person":
            return False
        return principal.role != "patient" or (principal.fhir_user or "").startswith("Patient/")

    def user_scope_rules(self, principal: Principal, rtype: str, permission: str) -> list | None:
        """THE HOOK for the record's access rules (consent, care relationships): the clauses limiting what
        the *user* behind ``user/`` scopes may reach of ``rtype`` ([] = no limit, None = nothing).

        Until those rules exist: a patient account sees its own compartment (its ``fhirUser`` is
        Patient/x), a related person nothing through ``user/`` scopes, every other account (practitioner,
        admin) everything.
        """
        if not self.user_scopes_allowed(principal):
            return None
        if principal.role == "patient":
            return self.compartment(rtype, (principal.fhir_user or "")[len("Patient/"):], permission)
        return []

    def scope_query(self, scope: Scope, rtype: str) -> list | None:
        """The clauses of a granular scope's query on ``rtype``; None when it is not a valid search of it."""
        if self.server is None:
            return None
        try:
            parsed = self.server.parser.parse((rtype,), list(scope.query), strict=True)
        except FHIRError:
            return None
        if not parsed.query.clauses or parsed.includes or parsed.issues:
            return None
        return list(parsed.query.clauses)


def _server_root(fhir_base: str) -> str:
    from urllib.parse import urlsplit
    base = fhir_base.rstrip("/")
    if base.endswith("/fhir"):
        return base[: -len("/fhir")]
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


def build_gate(settings: Any, key_source: KeySource, is_revoked: Callable[[str], bool] | None = None, *,
               issuer: str | None = None, audience: str | None = None,
               client_revoked: Callable[[str], bool] | None = None) -> SmartGate:
    """The SMART gate of a server with these settings.

    ``key_source``: a callable returning the authorization server's current public JWKS (a dict
    ``{"keys": [...]}``, or a joserfc ``KeySet``) — in-process, e.g.
    ``lambda: auth.token_authority(store).jwks()`` — or the JWKS URL of a separate authorization
    server (fetched, cached five minutes). ``is_revoked(jti) -> bool``: the revocation deny list
    when the authorization server shares the store (None otherwise); ``client_revoked(client_id) -> bool``:
    whether the token's client application was withdrawn (likewise).

    ``audience`` defaults to the FHIR base URL (``settings.base_url``, else the request's host +
    ``/fhir``), ``issuer`` to its server root + ``/auth`` (as ``auth/`` derives them).
    """
    def fhir_base() -> str:
        configured = audience or getattr(settings, "base_url", None)
        if configured:
            return configured.rstrip("/")
        from flask import request
        return request.host_url.rstrip("/") + "/fhir"

    def expected_issuer() -> str:
        configured = issuer or getattr(settings, "auth_issuer", None)
        return configured.rstrip("/") if configured else _server_root(fhir_base()) + "/auth"

    from fhir_server.policy.gate import RecordGate  # the record's rules narrow the SMART gate (issue #7)
    from fhir_server.policy.relations import RecordPolicy
    policy = RecordPolicy(**{name: getattr(settings, name) for name in RecordPolicy.__dataclass_fields__
                             if getattr(settings, name, None) is not None})
    verifier = TokenVerifier(key_source, audience=fhir_base, issuer=expected_issuer, is_revoked=is_revoked,
                             client_revoked=client_revoked)
    return RecordGate(verifier, policy, clock=getattr(settings, "clock", None))


def scopes_of(principal: Principal) -> Iterable[Scope]:
    """The parsed clinical scopes of a principal (for tools and tests)."""
    return parse_scopes(principal.scopes)
