"""Search and history Bundles: entries, ``fullUrl``, ``search.mode`` and paging links."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fhir_server.http.rendering import Renderer
from fhir_server.model import jsonio
from fhir_server.model.outcome import operation_outcome
from fhir_server.search.parse import ParsedSearch
from fhir_server.services.search import SearchResult
from fhir_server.store.base import HistoryPage, StoredResource


def _link(relation: str, url: str) -> dict:
    return {"relation": relation, "url": url}


def _entry(stored: StoredResource, base: str, body: Any) -> dict:
    return {"fullUrl": f"{base}/{stored.type}/{stored.id}", "resource": body}


def search_bundle(result: SearchResult, parsed: ParsedSearch, base: str, path: str, renderer: Renderer) -> dict:
    """A searchset Bundle whose links show exactly the parameters that were applied.

    ``self`` is this page (with its ``_page``); ``first`` and ``previous`` are given on later pages
    (``previous`` only where the store can page backwards: sorted searches), ``next`` when more follow.
    Matches come first, then included resources, then the OperationOutcome of ignored parameters.
    """
    root = base.rsplit("/fhir", 1)[0] if "/fhir" in base else base
    url = root + path
    applied = list(parsed.applied)

    def href(page: str | None) -> str:
        query = urlencode([*applied, ("_page", page)] if page else applied)
        return url + ("?" + query if query else "")

    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = [_link("self", href(parsed.page))]
    if parsed.page:
        bundle["link"].append(_link("first", href(None)))
    if result.previous_page:
        bundle["link"].append(_link("previous", href(result.previous_page)))
    if result.next_page:
        bundle["link"].append(_link("next", href(result.next_page)))
    entries = []
    for stored, mode in [*((s, "match") for s in result.matches), *((s, "include") for s in result.included)]:
        entry = _entry(stored, base, renderer.subset(jsonio.loads(stored.body), parsed.summary, parsed.elements))
        entry["search"] = {"mode": mode}
        entries.append(entry)
    if result.issues:
        entries.append({"resource": operation_outcome(result.issues), "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle


def history_bundle(page: HistoryPage, base: str, path: str, args: Any) -> dict:
    root = base.rsplit("/fhir", 1)[0] if "/fhir" in base else base
    kept = [(k, v) for k, v in args.items(multi=True) if k in ("_count", "_since", "_at")]
    url = root + path
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = [_link("self", url + ("?" + urlencode(kept) if kept else ""))]
    if page.next_cursor:
        bundle["link"].append(_link("next", url + "?" + urlencode([*kept, ("_page", page.next_cursor)])))
    entries = []
    for stored in page.entries:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{stored.type}/{stored.id}"}
        if not stored.deleted:
            entry["resource"] = jsonio.loads(stored.body)
        method = {"POST": "POST", "DELETE": "DELETE", "PATCH": "PATCH"}.get(stored.method, "PUT")
        request_url = stored.type if method == "POST" else f"{stored.type}/{stored.id}"
        entry["request"] = {"method": method, "url": request_url}
        status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(method, "200 OK")
        entry["response"] = {"status": status, "etag": f'W/"{stored.version}"', "lastModified": stored.last_updated}
        entries.append(entry)
    if entries:
        bundle["entry"] = entries
    return bundle
