"""The 24-month window: care items whose service dates all fall before the cut-off day are never
returned, to anyone, by any interaction. The cut-off day is the same calendar day 24 months before
today, today being the date in Europe/Paris: at NOW (2026-11-25T23:30Z = 2026-11-26 00:30 in Paris)
it is 2024-11-26."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from feed_helpers import CUTOFF, NOW, bundle, care_item, identifiers

from fhir_server.carehistory.window import cutoff_day, months_before


@pytest.fixture
def history(feed):
    items = [care_item("on-cutoff", served="2024-11-26"),  # 24 months to the day: still shown
             care_item("day-before", served="2024-11-25"),  # one day older: never shown
             care_item("recent", served="2026-11-20"),
             care_item("stay-across", served="2024-11-20", kind="institutional",  # a stay reaching the cut-off
                       billablePeriod={"start": "2024-11-20", "end": "2024-11-26"},
                       item=[{"sequence": 1, "productOrService": {"text": "Séjour"},
                              "servicedPeriod": {"start": "2024-11-20", "end": "2024-11-26"}}])]
    response = feed.post("/fhir", bundle(items), feed.insurer)
    assert [e["response"]["status"] for e in response.get_json()["entry"]] == ["201 Created"] * 4
    feed.ids = {e["resource"]["identifier"][0]["value"]: e["resource"]["id"] for e in response.get_json()["entry"]}
    return feed


SHOWN = ["on-cutoff", "recent", "stay-across"]


def test_the_cut_off_day_follows_the_paris_calendar():
    assert cutoff_day(NOW) == CUTOFF == date(2024, 11, 26)
    assert cutoff_day(datetime(2026, 11, 25, 22, 59, tzinfo=timezone.utc)) == date(2024, 11, 25)  # 23:59 Paris
    assert months_before(date(2026, 2, 28), 24) == date(2024, 2, 28)
    assert months_before(date(2028, 2, 29), 24) == date(2026, 2, 28)  # no 29 February in 2026


def test_search_returns_nothing_older_than_24_months(history):
    for headers in (history.admin, history.patient("pa"), history.auth("system/ExplanationOfBenefit.rs")):
        found = history.get("/fhir/ExplanationOfBenefit?_total=accurate", headers).get_json()
        assert identifiers(found) == SHOWN and found["total"] == 3
    explicit = history.get("/fhir/ExplanationOfBenefit?service-date=lt2024-11-26", history.admin).get_json()
    assert identifiers(explicit) == ["stay-across"]  # it has a date before, and one on the cut-off day


def test_read_vread_and_history_answer_like_an_unknown_id(history):
    old = history.ids["day-before"]
    for path in (f"/fhir/ExplanationOfBenefit/{old}", f"/fhir/ExplanationOfBenefit/{old}/_history/1",
                 f"/fhir/ExplanationOfBenefit/{old}/_history"):
        response = history.get(path, history.admin)
        assert response.status_code == 404, (path, response.get_json())
    shown = history.ids["on-cutoff"]
    assert history.get(f"/fhir/ExplanationOfBenefit/{shown}", history.admin).status_code == 200
    assert history.get(f"/fhir/ExplanationOfBenefit/{shown}/_history/1", history.admin).status_code == 200
    assert history.get(f"/fhir/ExplanationOfBenefit/{shown}/_history", history.admin).status_code == 200


def test_includes_and_everything_leave_it_out(history):
    revinclude = history.get("/fhir/Patient?_id=pa&_revinclude=ExplanationOfBenefit:patient", history.admin)
    assert identifiers(revinclude.get_json()) == SHOWN
    everything = history.get("/fhir/Patient/pa/$everything", history.patient("pa")).get_json()
    assert identifiers(everything) == SHOWN


def test_export_leaves_it_out(history):
    admin = history.auth("system/*.rs", sub="exporter")
    kickoff = history.get("/fhir/$export?_type=ExplanationOfBenefit", {**admin, "Prefer": "respond-async"})
    assert kickoff.status_code == 202, kickoff.get_json()
    history.server.bulk.worker.run_pending()
    manifest = history.client.get(kickoff.headers["Content-Location"], headers=admin).get_json()
    lines = b"".join(history.client.get(o["url"], headers=admin).data for o in manifest["output"])
    assert sorted(line.split(b'"value":"')[1].split(b'"')[0].decode() for line in lines.splitlines()) == SHOWN


def test_an_item_leaves_the_window_when_its_day_passes(history, clock):
    clock.now = NOW + timedelta(days=1)  # 2026-11-27 in Paris: cut-off 2024-11-27
    found = history.get("/fhir/ExplanationOfBenefit", history.admin).get_json()
    assert identifiers(found) == ["recent"]
    assert history.get(f"/fhir/ExplanationOfBenefit/{history.ids['on-cutoff']}", history.admin).status_code == 404


def test_the_window_does_not_block_the_feed(history):
    """An expired item is still recognised by its identifier: re-sending it changes nothing."""
    again = history.post("/fhir", bundle([care_item("day-before", served="2024-11-25")]), history.insurer)
    assert again.get_json()["entry"][0]["response"]["status"] == "200 OK"
    assert again.get_json()["entry"][0]["response"]["etag"] == 'W/"1"'


def test_type_history_shows_no_version_of_an_expired_item(history):
    listed = history.get("/fhir/ExplanationOfBenefit/_history", history.admin)
    assert listed.status_code == 200, listed.get_json()
    assert identifiers(listed.get_json()) == SHOWN
