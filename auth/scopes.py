"""SMART scopes as the authorization server needs them: which can be granted, and how to say them.

The resource server parses the granted ``scope`` claim on its own (the access gate); here a scope is
only checked for syntax, filtered against what a client is registered for and what a grant type
allows, and described in plain words on the approval screen.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CLINICAL = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|c?r?u?d?s?)(\?\S+)?$")
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}

LAUNCH_SCOPES = ("launch", "launch/patient")
IDENTITY_SCOPES = ("openid", "fhirUser")
REFRESH_SCOPES = ("offline_access", "online_access")
# a professional's app asks for these to open a record in an emergency (fhir_server/policy/emergency.py);
# the resource server honours them for practitioner accounts only
EMERGENCY_SCOPES = ("emergency-access", "emergency-regulation")
SPECIAL = LAUNCH_SCOPES + IDENTITY_SCOPES + REFRESH_SCOPES + EMERGENCY_SCOPES

# what discovery lists in scopes_supported (clinical scopes are open-ended: these are the wildcards)
SUPPORTED = list(SPECIAL) + [
    "patient/*.read", "patient/*.write", "patient/*.*", "patient/*.rs", "patient/*.cruds",
    "user/*.read", "user/*.write", "user/*.*", "user/*.rs", "user/*.cruds",
    "system/*.read", "system/*.write", "system/*.*", "system/*.rs", "system/*.cruds",
]


@dataclass(frozen=True)
class ClinicalScope:
    context: str        # patient | user | system
    resource: str       # a type or "*"
    permissions: str    # v2 letters, in cruds order
    query: str | None   # granular "?category=laboratory" (without the "?")
    text: str

    @property
    def v1(self) -> bool:
        return self.text.split("?")[0].rsplit(".", 1)[1] in V1_PERMISSIONS


def parse_clinical(scope: str) -> ClinicalScope | None:
    match = CLINICAL.match(scope)
    if not match:
        return None
    context, resource, perms, query = match.groups()
    letters = V1_PERMISSIONS.get(perms, perms)
    if not letters:
        return None
    return ClinicalScope(context, resource, letters, query[1:] if query else None, scope)


def split(scope: str | None) -> list[str]:
    """Scopes in request order, without duplicates."""
    seen: list[str] = []
    for item in (scope or "").split():
        if item not in seen:
            seen.append(item)
    return seen


def covers(registered: str, requested: str) -> bool:
    """May a client registered for ``registered`` be granted ``requested``?"""
    if registered == requested:
        return True
    have, want = parse_clinical(registered), parse_clinical(requested)
    if not have or not want or have.context != want.context:
        return False
    if have.resource not in ("*", want.resource):
        return False
    if have.query is not None and have.query != want.query:
        return False
    return set(want.permissions) <= set(have.permissions)


def grantable(requested: str | None, registered: str | None, grant_type: str) -> list[str]:
    """The requested scopes that this grant type supports and the client's registration allows.

    ``registered`` empty or None: the client may ask for any supported scope of its grant type.
    Unknown or unsupported scopes are dropped (SMART lets the server grant less than asked).
    """
    allowed = split(registered)
    result = []
    for scope in split(requested):
        clinical = parse_clinical(scope)
        if grant_type == "client_credentials":
            if not clinical or clinical.context != "system":
                continue
        else:
            if clinical is None and scope not in SPECIAL:
                continue
            if clinical is not None and clinical.context == "system":
                continue
        if allowed and not any(covers(r, scope) for r in allowed):
            continue
        result.append(scope)
    return result


def needs_patient(scopes: list[str]) -> bool:
    return "launch/patient" in scopes or any(s.startswith("patient/") for s in scopes)


# -- plain words --------------------------------------------------------------------------------------
_VERBS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_SPECIAL_WORDS = {
    "openid": "Confirm your identity to the application",
    "fhirUser": "Know which person you are in the record (your own record link)",
    "launch": "Receive the context (patient, encounter) of the session that launched it",
    "launch/patient": "Work on one patient's record, chosen when it starts",
    "offline_access": "Keep access after you sign out, until you or an administrator revoke it",
    "online_access": "Keep access while you stay signed in",
}


def _plural(resource: str) -> str:
    if resource == "*":
        return "all kinds of health data"
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", resource).lower()
    return words + ("es" if words.endswith(("s", "x", "ch", "sh")) else "s")


def describe(scope: str) -> str:
    """One line of plain words for the approval screen."""
    if scope in _SPECIAL_WORDS:
        return _SPECIAL_WORDS[scope]
    clinical = parse_clinical(scope)
    if clinical is None:
        return scope
    verbs = [_VERBS[c] for c in "cruds" if c in clinical.permissions]
    verb_text = verbs[0] if len(verbs) == 1 else ", ".join(verbs[:-1]) + " and " + verbs[-1]
    whose = {"patient": "of the selected patient", "user": "that you are allowed to see",
             "system": "of every patient"}[clinical.context]
    text = f"{verb_text.capitalize()} {_plural(clinical.resource)} {whose}"
    if clinical.query:
        conditions = [part.replace("=", " is ", 1) for part in clinical.query.split("&")]
        text += " (only where " + " and ".join(conditions) + ")"
    return text
