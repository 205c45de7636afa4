"""``fhir-server validate FILE... [--profile URL]``: validate resources without a server.

For integrators' CI pipelines: every resource (any R4 type, JSON or NDJSON, Bundles
included) is validated against the base R4 definitions, the profiles it claims in
``meta.profile`` and the ``--profile`` URLs whose type matches it; each resource's issues
are printed (severity, FHIRPath location, code, message) and the exit status is 1 when
any resource has an error (2 when a file cannot be read or a ``--profile`` is unknown),
0 otherwise. Bundle entries are reported one by one, under their Bundle.

Profiles come from the repository's ``profiles/`` and from every ``--ig DIR`` (folders of
StructureDefinition, ValueSet and CodeSystem JSON files, e.g. an unpacked IG package).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from fhir_server.model.outcome import Issue, operation_outcome

ENTRY = re.compile(r"^Bundle\.entry\[(\d+)\]\.resource(?=$|[.\[])")
SYMBOLS = {"fatal": "F", "error": "E", "warning": "W", "information": "I"}


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("validate", help="validate FHIR resources (JSON, NDJSON, Bundles) against R4 and profiles",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="files or folders (*.json, *.ndjson)")
    parser.add_argument("--profile", action="append", default=[], metavar="URL",
                        help="also validate against this profile (canonical URL, optionally |version); repeatable; "
                             "applies to the resources of the profile's type, Bundle entries included")
    parser.add_argument("--ig", action="append", default=[], type=Path, metavar="DIR",
                        help="load the conformance resources of this folder too (repeatable)")
    parser.add_argument("--no-meta-profile", action="store_true",
                        help="do not validate against the profiles resources claim in meta.profile")
    parser.add_argument("--strict", action="store_true",
                        help="extensions this validator does not know are errors (as the HL7 validator does), "
                             "not warnings")
    parser.add_argument("--allow-comments", action="store_true", help="accept // and /* */ comments in JSON files")
    parser.add_argument("--no-example-urls", action="store_true",
                        help="URLs on example.org, example.com, acme.com... are errors")
    parser.add_argument("--security-checks", action="store_true",
                        help="text that looks like HTML in strings is an error")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (default) or one JSON object per resource with its OperationOutcome")
    parser.add_argument("--quiet", action="store_true", help="only list resources that have issues")


def run(args: argparse.Namespace, out=None) -> int:
    from fhir_server.validation.profiles import DEFAULT_PROFILES, ProfileRegistry
    from fhir_server.validation.validator import ValidationOptions, Validator

    out = out or sys.stdout
    registry = ProfileRegistry(folders=[DEFAULT_PROFILES, *args.ig])
    for problem in registry.problems:
        print(f"note: {problem}", file=sys.stderr)
    options = ValidationOptions(unknown_extension="error" if args.strict else "warning",
                                example_urls=not args.no_example_urls, security_checks=args.security_checks)
    validator = Validator(registry, options)
    profiles: dict[str, str] = {}  # url -> type
    for url in args.profile:
        sd = registry.url(url)
        if sd is None or sd.get("kind") != "resource":
            print(f"fhir-server validate: profile {url} is not known (load its folder with --ig)", file=sys.stderr)
            return 2
        profiles[url] = sd["type"]
    status = 0
    totals = {"resources": 0, "errors": 0, "warnings": 0}
    for path in args.paths:
        if not path.exists():
            print(f"fhir-server validate: {path} does not exist", file=sys.stderr)
            return 2
    for where, item in _items(args.paths, args.allow_comments):
        if isinstance(item, Exception):
            reports = [(where, None, [Issue("fatal", "structure", f"not readable as FHIR JSON: {item}")])]
        else:
            reports = list(_validate(validator, item, where, profiles, not args.no_meta_profile))
        for label, resource, issues in reports:
            totals["resources"] += 1
            errors = sum(i.severity in ("error", "fatal") for i in issues)
            totals["errors"] += errors > 0
            totals["warnings"] += any(i.severity == "warning" for i in issues)
            if errors:
                status = 1
            _print(out, args, label, resource, issues)
    if args.format == "text":
        print(f"{totals['resources']} resource(s): {totals['errors']} with errors, {totals['warnings']} with "
              f"warnings", file=out)
    return status


def strip_json_comments(text: str) -> str:
    """JSON with ``//`` and ``/* */`` comments (JSON5 style) -> JSON; strings are left alone."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _items(paths: list[Path], comments: bool = False) -> Iterator[tuple[str, Any]]:
    from fhir_server.model import jsonio

    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson")) if path.is_dir() else [path]
        for file in files:
            try:
                data = file.read_bytes()
            except OSError as exc:
                yield str(file), exc
                continue
            if comments:
                data = strip_json_comments(data.decode("utf-8-sig", errors="replace")).encode()
            if file.suffix == ".ndjson":
                for number, line in enumerate(data.splitlines(), 1):
                    if line.strip():
                        yield from _parsed(f"{file}:{number}", line, jsonio)
            else:
                yield from _parsed(str(file), data, jsonio)


def _parsed(where: str, data: bytes, jsonio) -> Iterator[tuple[str, Any]]:
    try:
        yield where, jsonio.loads(data)
    except jsonio.JSONError as exc:
        yield where, exc


def _validate(validator, resource: Any, where: str, profiles: dict[str, str],
              claims: bool) -> Iterator[tuple[str, Any, list[Issue]]]:
    """(label, resource, issues) for the resource and, for a Bundle, each entry."""
    from fhir_server.validation.validator import claimed_profiles

    if not isinstance(resource, dict):
        yield where, resource, validator.validate(resource)
        return
    rtype = resource.get("resourceType")
    issues = validator.validate(resource)
    if rtype != "Bundle":
        wanted = [u for u, t in profiles.items() if t == rtype]
        yield where, resource, issues + _profile_issues(validator, resource, wanted, claims, issues)
        return
    by_entry: dict[int, list[Issue]] = {}
    own: list[Issue] = []
    for issue in issues:
        match = ENTRY.match(issue.expression or "")
        (by_entry.setdefault(int(match.group(1)), []) if match else own).append(issue)
    wanted = [u for u, t in profiles.items() if t == "Bundle"]
    yield where, resource, own + _profile_issues(validator, resource, wanted, claims, issues)
    entries = resource.get("entry") if isinstance(resource.get("entry"), list) else []
    for index, entry in enumerate(entries):
        item = entry.get("resource") if isinstance(entry, dict) else None
        found = by_entry.get(index, [])
        if isinstance(item, dict) and isinstance(item.get("resourceType"), str):
            prefix = f"Bundle.entry[{index}].resource"
            local = [_moved(i, prefix, item["resourceType"]) for i in found]
            wanted = [u for u, t in profiles.items() if t == item["resourceType"]]
            if wanted or (claims and claimed_profiles(item)):
                extra = _profile_issues(validator, item, wanted, claims, local)
                found = found + [_moved(i, item["resourceType"], prefix) for i in extra]
        if item is not None or found:
            yield f"{where}#entry[{index}]", item, found


def _moved(issue: Issue, old: str, new: str) -> Issue:
    expression = issue.expression
    if expression and (expression == old or expression.startswith((old + ".", old + "["))):
        expression = new + expression[len(old):]
    return replace(issue, expression=expression)


def _profile_issues(validator, resource: dict, wanted: list[str], claims: bool, base: list[Issue]) -> list[Issue]:
    from fhir_server.validation.validator import claimed_profiles

    claimed = claimed_profiles(resource) if claims else []
    if not wanted and not claimed:
        return []
    report = validator.check_profiles(resource, [*wanted, *claimed], base)
    issues = list(report.issues)
    for url in report.unknown:
        position = claimed.index(url) if url in claimed else 0
        issues.append(Issue("warning", "not-supported", f"profile {url} (meta.profile) is not known here: not checked "
                            "(load it with --ig)", f"{resource['resourceType']}.meta.profile[{position}]"))
    return issues


def _print(out, args: argparse.Namespace, label: str, resource: Any, issues: list[Issue]) -> None:
    if args.quiet and not issues:
        return
    name = ""
    if isinstance(resource, dict):
        name = f"{resource.get('resourceType', '?')}/{resource.get('id', '(no id)')}"
    if args.format == "json":
        print(json.dumps({"source": label, "resource": name, "outcome": operation_outcome(issues)},
                         ensure_ascii=False), file=out)
        return
    errors = sum(i.severity in ("error", "fatal") for i in issues)
    warnings = sum(i.severity == "warning" for i in issues)
    verdict = "OK" if not errors else "INVALID"
    counts = f"{errors} error(s), {warnings} warning(s)" if issues else "no issues"
    print(f"{label}  {name}  {verdict}: {counts}", file=out)
    order = {"fatal": 0, "error": 1, "warning": 2, "information": 3}
    for issue in sorted(issues, key=lambda i: order.get(i.severity, 4)):
        print(f"  {issue.severity:<11} {issue.expression or '-'}  [{issue.code}] {issue.diagnostics}", file=out)
