"""The purge: expired care items are physically removed (every version, every index entry) and the purge
is traced by an AuditEvent valid against dmp-auditevent; ``fhir-server purge`` runs it on a store."""
from __future__ import annotations

from feed_helpers import CUTOFF, NOW, bundle, care_item, identifiers

from fhir_server.carehistory import EOB
from fhir_server.carehistory.purge import AUDIT_PROFILE, purge
from fhir_server.model import jsonio
from fhir_server.search.query import Clause, Query, TokenValue


def feed_history(feed) -> dict[str, str]:
    items = [care_item("old", served="2024-11-25"), care_item("old-b", "pb", served="2023-01-10"),
             care_item("kept", served="2024-11-26"), care_item("recent", served="2026-11-01")]
    response = feed.post("/fhir", bundle(items), feed.insurer)
    feed.post("/fhir", bundle([care_item("old", served="2024-11-25", code="VG")]), feed.insurer)  # a version 2
    return {e["resource"]["identifier"][0]["value"]: e["resource"]["id"] for e in response.get_json()["entry"]}


def indexed(store, rid: str) -> bool:
    """Whether the store still finds the item by its index (without the window: a store query)."""
    query = Query(types=(EOB,), clauses=[Clause("_id", "token", None, (TokenValue(None, rid, False),))])
    return bool(store.search(query, count=1).resources)


def test_purge_removes_expired_items_entirely_and_keeps_the_window(feed):
    ids = feed_history(feed)
    store = feed.server.store
    report = purge(feed.server)
    assert (report.cutoff, report.items, report.versions, report.patients) == (CUTOFF, 2, 3, 2)
    for name in ("old", "old-b"):
        assert store.read(EOB, ids[name]) is None and not indexed(store, ids[name])
        assert store.vread(EOB, ids[name], 1) is None
    assert store.history(EOB, ids["old"]).entries == []
    assert identifiers(feed.get("/fhir/ExplanationOfBenefit", feed.admin).get_json()) == ["kept", "recent"]
    assert indexed(store, ids["kept"]) and indexed(store, ids["recent"])
    again = purge(feed.server)
    assert again.items == 0 and again.audit_id is None  # idempotent, nothing to trace


def test_the_purge_is_traced_by_a_valid_audit_event(feed, engine):
    feed_history(feed)
    report = purge(feed.server)
    stored = feed.server.store.read("AuditEvent", report.audit_id)
    audit = jsonio.loads(stored.body)
    issues = engine.profiles.validate_all(audit, [AUDIT_PROFILE])
    assert not [i for i in issues if i.severity in ("error", "fatal")], issues
    assert audit["action"] == "D" and audit["period"]["start"] == NOW.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    details = {d["type"]: d["valueString"] for d in audit["entity"][0]["detail"]}
    assert details == {"cutoff": "2024-11-26", "items": "2", "versions": "3", "patients": "2"}
    assert "ExplanationOfBenefit" in audit["entity"][0]["description"]


def test_fhir_server_purge_on_a_store(tmp_path, engine, capsys):
    from datetime import datetime, timezone

    from fhir_server.access.gate import ANONYMOUS, OpenGate
    from fhir_server.app import create_app
    from fhir_server.cli import main
    from fhir_server.settings import Settings
    from fhir_server.store.sqlite import SQLiteStore

    url = f"sqlite:///{tmp_path / 'fhir.sqlite3'}"
    today = datetime.now(timezone.utc)
    server = create_app(Settings(store_url=url), store=SQLiteStore(tmp_path / "fhir.sqlite3"), gate=OpenGate(),
                        engine=engine).extensions["fhir"]
    server.resources.update(ANONYMOUS, "Patient", "pa", {"resourceType": "Patient", "id": "pa"})
    for item in (care_item("ancient", served=f"{today.year - 3}-01-15"), care_item("fresh", served=today.date().isoformat())):
        server.resources.create(ANONYMOUS, EOB, item)
    server.store.close()
    assert main(["purge", "--store", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 care items (1 versions) of 1 patients with every service date before") and "AuditEvent/" in out
