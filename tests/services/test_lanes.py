"""Large Bundles take turns in a process (services/lanes.py), so the insurer's feed never holds every request
thread: while one large Bundle runs, a second one waits, and reads and small Bundles are served at once."""
from __future__ import annotations

import threading

import pytest

from fhir_server.services.lanes import LARGE_FROM, Lane

FHIR_JSON = "application/fhir+json"


def batch(size: int) -> dict:
    return {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}}
        for _ in range(size)]}


def occupied(lane: Lane) -> threading.Event:
    """Hold the lane's only place from another thread until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lane.entered(lane.large_from):
            entered.set()
            release.wait(10)

    threading.Thread(target=hold, daemon=True).start()
    assert entered.wait(5)
    return release


@pytest.fixture
def lane(app) -> Lane:
    server = app.extensions["fhir"]
    server.bundles.lane = Lane(width=1)
    return server.bundles.lane


def post_in_thread(client, body: dict) -> tuple[threading.Thread, list]:
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(client.post("/fhir", json=body,
                                                                        headers={"Accept": FHIR_JSON})))
    thread.start()
    return thread, answers


def test_a_large_bundle_waits_while_another_runs_then_is_processed(app, lane):
    client = app.test_client()
    release = occupied(lane)
    thread, answers = post_in_thread(client, batch(LARGE_FROM))
    thread.join(0.5)
    assert thread.is_alive() and lane.waiting == 1 and not answers  # waiting for its turn, nothing written yet
    assert client.get("/fhir/Patient?_summary=count").get_json()["total"] == 0
    release.set()
    thread.join(10)
    assert answers[0].status_code == 200
    assert [e["response"]["status"] for e in answers[0].get_json()["entry"]] == ["201 Created"] * LARGE_FROM
    assert (lane.running, lane.waiting) == (0, 0)


def test_reads_and_small_bundles_do_not_wait_for_the_lane(app, lane):
    client = app.test_client()
    release = occupied(lane)
    try:
        small = client.post("/fhir", json=batch(LARGE_FROM - 1), headers={"Accept": FHIR_JSON})
        assert small.status_code == 200
        assert client.get("/fhir/Patient?_summary=count").get_json()["total"] == LARGE_FROM - 1
    finally:
        release.set()


def test_the_lane_is_released_when_a_large_bundle_fails(app, lane):
    client = app.test_client()
    bad = batch(LARGE_FROM)
    bad["type"] = "transaction"
    bad["entry"][3]["resource"]["gender"] = "sometimes"
    answer = client.post("/fhir", json=bad, headers={"Accept": FHIR_JSON})
    assert answer.status_code == 400
    assert (lane.running, lane.waiting) == (0, 0)
    assert client.post("/fhir", json=batch(LARGE_FROM), headers={"Accept": FHIR_JSON}).status_code == 200


def test_a_lane_has_at_least_one_place():
    with pytest.raises(ValueError):
        Lane(width=0)
