"""Rules of the R4 specification that no FHIRPath invariant of the definitions can express.

Each check runs when the walk meets an instance of its type (:attr:`Node.check`):

- ``Narrative``: the ``div`` is well-formed XHTML in the XHTML namespace, with XML entities
  only (``&reg;`` is an HTML entity), and only the elements and attributes narrative allows
  (txt-1: no script, form, iframe, object, head or body, no ``on*`` event attributes, no
  ``javascript:`` links), with some content (txt-2); fhirpathpy lacks ``htmlChecks()``;
- ``Attachment``: ``size`` and ``hash`` (SHA-1, base64) agree with ``data`` when both are given;
- ``Coding``: ``system`` is an absolute URI, and names a code system, not a value set;
- ``Bundle``: ``fullUrl`` is absolute; a ``link`` relation (self, first, previous, next, last)
  appears once; in a ``document`` Bundle every relative or ``urn:`` reference resolves to
  exactly one entry (versioned references to the entry with that ``meta.versionId``).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Any

from fhir_server.model.outcome import Issue

XHTML = "http://www.w3.org/1999/xhtml"
ALLOWED_ELEMENTS = frozenset(
    "p br div h1 h2 h3 h4 h5 h6 a span b em i strong small big tt dfn q var abbr acronym cite blockquote hr "
    "address bdo kbd sub sup ul ol li dl dt dd pre table caption colgroup col thead tr tfoot tbody th td code samp "
    "img map area u s strike del ins center font".split())
UNIQUE_LINKS = ("self", "first", "previous", "prev", "next", "last")
HISTORY = re.compile(r"^(?P<base>.*?)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(/_history/(?P<version>[^/]+))?$")

Check = Callable[[Any, str, list], None]


def narrative(value: dict, path: str, issues: list[Issue]) -> None:
    div = value.get("div")
    if not isinstance(div, str) or not div.lstrip().startswith("<div"):
        return  # the primitive check reported it
    where = f"{path}.div"
    try:
        root = ET.fromstring(div)
    except ET.ParseError as exc:
        issues.append(Issue("error", "value", f"the narrative is not well-formed XHTML: {exc} (only the XML "
                                              "entities &amp; &lt; &gt; &quot; &apos; and numeric ones exist)",
                            where))
        return
    if root.tag != f"{{{XHTML}}}div":
        issues.append(Issue("error", "value", "the narrative must be a <div> in the XHTML namespace "
                                              f"(xmlns=\"{XHTML}\")", where))
        return
    problems: list[str] = []
    has_content = False
    for element in root.iter():
        tag = element.tag
        name = tag.split("}", 1)[1] if tag.startswith("{") else tag
        if tag.startswith("{") and not tag.startswith(f"{{{XHTML}}}"):
            problems.append(f"element '{name}' outside the XHTML namespace")
        elif name not in ALLOWED_ELEMENTS:
            problems.append(f"element '{name}'")
        if name == "img":
            has_content = True
        for attribute, text in element.attrib.items():
            local = attribute.split("}", 1)[-1].lower()
            if local.startswith("on"):
                problems.append(f"event attribute '{local}'")
            elif local in ("href", "src") and text.strip().lower().startswith(("javascript:", "vbscript:")):
                problems.append(f"script in '{local}'")
        if (element.text and element.text.strip()) or (element is not root and element.tail and element.tail.strip()):
            has_content = True
    if problems:
        issues.append(Issue("error", "invariant", "txt-1: The narrative SHALL contain only the basic html formatting "
                                                  "elements and attributes (found: " + ", ".join(problems[:5]) + ")",
                            where))
    if not has_content:
        issues.append(Issue("error", "invariant", "txt-2: The narrative SHALL have some non-whitespace content", where))


def attachment(value: dict, path: str, issues: list[Issue]) -> None:
    data = value.get("data")
    if not isinstance(data, str) or ("size" not in value and "hash" not in value):
        return
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return  # the primitive check reported it
    size = value.get("size")
    if type(size) is int and size != len(raw):
        issues.append(Issue("error", "value", f"the attachment's size is {size} but its data has {len(raw)} bytes",
                            path))
    digest = value.get("hash")
    if isinstance(digest, str):
        actual = base64.b64encode(hashlib.sha1(raw).digest()).decode()
        if digest != actual:
            try:
                sized = len(base64.b64decode(digest, validate=True)) == 20
            except (binascii.Error, ValueError):
                sized = False
            if sized:
                issues.append(Issue("error", "value", f"the attachment's hash {digest} is not the SHA-1 of its data "
                                                      f"({actual})", path))
            else:
                issues.append(Issue("warning", "value", f"the attachment's hash {digest} is not a base64 SHA-1 "
                                                        f"(the SHA-1 of its data is {actual})", path))


def coding_check(value_sets: Iterable[str]) -> Check:
    known = frozenset(value_sets)

    def coding(value: dict, path: str, issues: list[Issue]) -> None:
        system = value.get("system")
        if not isinstance(system, str) or not system:
            return
        if ":" not in system:
            issues.append(Issue("error", "value", f"Coding.system must be an absolute URI, not '{system}'",
                                f"{path}.system"))
        elif system.split("|")[0] in known:
            issues.append(Issue("error", "value", f"Coding.system names a value set, not a code system ('{system}')",
                                f"{path}.system"))
    return coding


def bundle(value: dict, path: str, issues: list[Issue]) -> None:
    entries = value.get("entry")
    entries = entries if isinstance(entries, list) else []
    for index, entry in enumerate(entries):
        full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if isinstance(full_url, str) and full_url and ":" not in full_url:
            issues.append(Issue("error", "value", f"the fullUrl must be an absolute URL (not '{full_url}')",
                                f"{path}.entry[{index}]"))
    links = value.get("link")
    seen: set[str] = set()
    for index, link in enumerate(links if isinstance(links, list) else []):
        relation = link.get("relation") if isinstance(link, dict) else None
        if relation in UNIQUE_LINKS:
            if relation in seen:
                issues.append(Issue("error", "value", f"the link relation '{relation}' can only occur once",
                                    f"{path}.link[{index}]"))
            seen.add(relation)
    if value.get("type") == "document":
        _document_references(entries, path, issues)


def _document_references(entries: list, path: str, issues: list[Issue]) -> None:
    """In a document, references resolve inside the Bundle: to one entry (per version when versioned)."""
    targets: dict[str, list[str | None]] = {}  # fullUrl -> versionIds of the entries with it
    by_type_id: dict[str, list[str]] = {}  # "Type/id" -> fullUrls (entries whose fullUrl is a urn)
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("fullUrl"), str):
            continue
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
        meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
        targets.setdefault(entry["fullUrl"], []).append(meta.get("versionId"))
        if isinstance(resource.get("resourceType"), str) and isinstance(resource.get("id"), str):
            by_type_id.setdefault(f"{resource['resourceType']}/{resource['id']}", []).append(entry["fullUrl"])
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        base = _base_of(entry.get("fullUrl"))
        for where, reference in _references(entry["resource"], f"{path}.entry[{index}].resource"):
            if reference.startswith("#") or reference.startswith("?"):
                continue
            if reference.startswith(("urn:uuid:", "urn:oid:")):
                if reference not in targets:
                    issues.append(Issue("error", "not-found", f"cannot find '{reference}' in the document Bundle",
                                        where))
                continue
            match = HISTORY.match(reference)
            if match is None or (match.group("base") and not match.group("base").startswith(("http:", "https:"))):
                continue
            if match.group("base"):
                full = reference.split("/_history/")[0]
            elif base is not None:
                full = f"{base}{match.group('type')}/{match.group('id')}"
            else:
                candidates = by_type_id.get(f"{match.group('type')}/{match.group('id')}", [])
                full = candidates[0] if len(candidates) == 1 else None
            versions = targets.get(full) if full else None
            if versions is None:
                if not match.group("base"):
                    issues.append(Issue("error", "not-found", f"cannot find '{reference}' in the document Bundle",
                                        where))
                continue
            version = match.group("version")
            found = sum(1 for v in versions if v == version) if version else len(versions)
            if found == 0:
                issues.append(Issue("error", "not-found", f"cannot find '{reference}' in the document Bundle: "
                                    f"no entry {full} has version {version}", where))
            elif found > 1:
                issues.append(Issue("error", "value", f"found {found} entries for '{reference}' in the document "
                                    "Bundle: the reference must say which version", where))


def _base_of(full_url: Any) -> str | None:
    if not isinstance(full_url, str):
        return None
    match = HISTORY.match(full_url)
    if match is None or not match.group("base").startswith(("http:", "https:")):
        return None
    return match.group("base")


def _references(value: Any, path: str):
    """(location, reference) of every Reference.reference below ``value`` (contained resources too)."""
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str) and reference:
            yield path, reference
        for key, item in value.items():
            if key in ("reference", "resourceType"):
                continue
            if isinstance(item, list):
                for index, element in enumerate(item):
                    yield from _references(element, f"{path}.{key}[{index}]")
            elif isinstance(item, dict):
                yield from _references(item, f"{path}.{key}")


def type_checks(value_sets: Iterable[str]) -> dict[str, Check]:
    """The checks by data type / resource name, for the compiler."""
    return {"Narrative": narrative, "Attachment": attachment, "Coding": coding_check(value_sets), "Bundle": bundle}


# -- checks behind validation options --------------------------------------------------------------------

EXAMPLE_HOSTS = ("example.org", "example.com", "example.net", "acme.com", "acme.org")
HTML_IN_TEXT = re.compile(r"<\s*/?\s*[A-Za-z][A-Za-z0-9]*[\s>/]")
URL_TYPES = frozenset({"uri", "url", "canonical"})


def example_url(value: str) -> bool:
    match = re.match(r"^[a-z][a-z0-9+.\-]*://([^/:?#]+)", value)
    return bool(match) and match.group(1).lower().endswith(EXAMPLE_HOSTS)


def string_checks(examples: bool, security: bool) -> Callable[[Any, str, str, list], None] | None:
    """A check of string-like primitive values per the options (None when nothing is to be checked)."""
    if examples and not security:
        return None

    def check(type_name: str, value: str, path: str, issues: list[Issue]) -> None:
        if not examples and type_name in URL_TYPES and example_url(value):
            issues.append(Issue("error", "value", f"example URLs are not allowed here ({value})", path))
        if security and type_name in ("string", "markdown") and HTML_IN_TEXT.search(value):
            issues.append(Issue("error", "security", "the string contains text that looks like HTML tags, which "
                                                     "security checks do not allow", path))
    return check
