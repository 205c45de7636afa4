"""Where profiles act on writes: the registry's required profiles, ``meta.profile`` claims, the mode.

On every write (create, update, patch, in a Bundle or alone, and ``fhir-server load``):

- base R4 validation always applies (the caller has done it: errors answer 400);
- the resource is then checked against the profiles its type must meet
  (``resources/registry/<Type>.json``, ``profiles``) and the profiles it claims in
  ``meta.profile``;
- ``profile_mode`` says what a miss does: ``enforce`` refuses the write with 422 and every
  issue; ``warn`` stores the resource and returns the problems as warnings with the
  response's OperationOutcome (``WriteResult.outcome``);
- a profile the server does not know is a warning (never an error, never a crash):
  claimed in ``meta.profile`` it is not checked; required by the registry it is a
  configuration problem, also logged at start-up.

``$validate`` asks the same questions (:meth:`ProfileEnforcer.report`) and adds the
profiles of its ``profile`` parameter, whose problems keep their severity (an unknown one
is an error there: the caller asked for that check explicitly).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from fhir_server.definitions import Definitions
from fhir_server.model.outcome import FHIRError, Issue
from fhir_server.validation.validator import Validator, claimed_profiles

PROFILE_MODES = ("enforce", "warn")
ERRORS = ("error", "fatal")
log = logging.getLogger(__name__)


class ProfileEnforcer:
    """Profiles on writes, per ``mode`` (``enforce`` or ``warn``); see the module documentation."""

    def __init__(self, validator: Validator, definitions: Definitions, mode: str = "warn") -> None:
        if mode not in PROFILE_MODES:
            raise ValueError(f"profile mode must be one of {', '.join(PROFILE_MODES)}, not {mode!r}")
        self.validator = validator
        self.definitions = definitions
        self.mode = mode
        for rtype, entry in sorted(definitions.served.items()):
            for url in entry.profiles:
                if not validator.knows_profile(url):
                    log.warning("registry: %s must meet profile %s, which is not known here: it is not checked",
                                rtype, url)

    def required(self, rtype: str) -> tuple[str, ...]:
        entry = self.definitions.served.get(rtype)
        return entry.profiles if entry is not None else ()

    def report(self, resource: dict, rtype: str, base_issues: Sequence[Issue],
               explicit: Sequence[str] = ()) -> list[Issue]:
        """The profile issues of a write of ``resource`` as ``rtype`` (errors stay errors in enforce mode)."""
        issues: list[Issue] = []
        if explicit:
            report = self.validator.check_profiles(resource, explicit, base_issues)
            for url in report.unknown:
                issues.append(Issue("error", "not-supported", f"profile {url} is not known to this server", "profile"))
            issues += report.issues
        required = self.required(rtype)
        claimed = claimed_profiles(resource)
        implied = [p for p in dict.fromkeys([*required, *claimed]) if p not in explicit]
        if not implied:
            return issues
        report = self.validator.check_profiles(resource, implied, [*base_issues, *issues])
        for url in report.unknown:
            if url in required:
                issues.append(Issue("warning", "not-supported", f"{rtype} resources must meet profile {url}, which "
                                    "this server does not know: it was not checked (server configuration)"))
            else:
                where = claimed.index(url)
                issues.append(Issue("warning", "not-supported", f"profile {url} (meta.profile) is not known to this "
                                    "server: the resource was not checked against it",
                                    f"{rtype}.meta.profile[{where}]"))
        if self.mode == "warn":
            issues += [_downgraded(i) for i in report.issues]
        else:
            issues += report.issues
        return issues

    def on_write(self, resource: dict, rtype: str, base_issues: Sequence[Issue]) -> list[Issue]:
        """Issues to return with a write; raises 422 in enforce mode when the resource misses a profile."""
        issues = self.report(resource, rtype, base_issues)
        errors = [i for i in issues if i.severity in ERRORS]
        if errors:
            raise FHIRError(422, errors + [i for i in [*base_issues, *issues] if i.severity not in ERRORS])
        return issues


def _downgraded(issue: Issue) -> Issue:
    if issue.severity not in ERRORS:
        return issue
    return replace(issue, severity="warning")
