"""R4 Subscriptions with rest-hook channels, from the outside: what a client creating one sees, and what its
endpoint (a local HTTP receiver) receives after writes commit."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from fhir_server.access.gate import OpenGate, Principal
from fhir_server.app import create_app
from fhir_server.settings import Settings
from fhir_server.subscriptions import OWNER_SYSTEM

from subscription_helpers import quick

FHIR_JSON = "application/fhir+json"
GLUCOSE = "http://loinc.org|2345-7"


def post(client, resource, **headers):
    return client.post(f"/fhir/{resource['resourceType']}", data=json.dumps(resource),
                       headers={"Content-Type": FHIR_JSON, **headers})


def put(client, resource):
    return client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", data=json.dumps(resource),
                      headers={"Content-Type": FHIR_JSON})


def subscription(endpoint: str, criteria: str = f"Observation?code={GLUCOSE}&subject=Patient/p1", **channel):
    return {"resourceType": "Subscription", "status": "requested", "reason": "Glucose results of p1",
            "criteria": criteria, "channel": {"type": "rest-hook", "endpoint": endpoint, **channel}}


def observation(patient: str = "p1", code: str = "2345-7", **extra):
    body = {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{patient}"}, "valueQuantity": {"value": 5.4, "unit": "mmol/L"}}
    body.update(extra)
    return body


def subscribe(client, receiver, **channel) -> dict:
    response = post(client, subscription(receiver.url, **channel))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def settle(server) -> None:
    assert server.subscriptions.deliveries.wait_idle(10), "deliveries did not finish"


# -- creation ---------------------------------------------------------------------------------------
def test_a_requested_subscription_is_accepted_active_with_its_owner_recorded(client):
    response = post(client, subscription("http://127.0.0.1:9/hook"))
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "active"
    assert {"system": OWNER_SYSTEM, "code": "anonymous"} in body["meta"]["tag"]
    assert client.get(f"/fhir/Subscription/{body['id']}").get_json()["status"] == "active"
    found = client.get("/fhir/Subscription?status=active").get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == [body["id"]]


def test_a_client_cannot_forge_the_owner_tag(client):
    sub = subscription("http://127.0.0.1:9/hook")
    sub["meta"] = {"tag": [{"system": OWNER_SYSTEM, "code": "someone-else"}]}
    body = post(client, sub).get_json()
    assert [t["code"] for t in body["meta"]["tag"] if t["system"] == OWNER_SYSTEM] == ["anonymous"]


def assert_refused(response, expression: str, *words: str) -> None:
    assert response.status_code in (400, 422), response.get_json()
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    issues = [i for i in outcome["issue"] if expression in i.get("expression", [])]
    assert issues, outcome
    for word in words:
        assert word in issues[0]["diagnostics"], issues[0]["diagnostics"]


def test_bad_criteria_are_refused_with_their_expression_and_nothing_is_stored(client):
    for criteria, words in [("Observation?no-such-parameter=1", ("no-such-parameter",)),
                            ("Unicorn?name=x", ("Unicorn",)),
                            ("Observation?date=not-a-date", ()),
                            ("Observation?code=1234&_sort=date", ("_sort",)),
                            ("http://elsewhere.example/fhir/Observation?code=1", ("relative",)),
                            (" ", ()), ("Observation?code=a&code:bad-modifier=b", ())]:
        assert_refused(post(client, subscription("http://127.0.0.1:9/hook", criteria=criteria)),
                       "Subscription.criteria", *words)
    assert client.get("/fhir/Subscription?_summary=count").get_json()["total"] == 0


def test_channels_other_than_rest_hook_are_refused_clearly(client):
    sub = subscription("wss://example.org/ws")
    sub["channel"]["type"] = "websocket"
    assert_refused(post(client, sub), "Subscription.channel.type", "websocket", "rest-hook")
    assert_refused(post(client, subscription("ftp://example.org/x")), "Subscription.channel.endpoint")
    assert_refused(post(client, subscription("http://169.254.169.254/latest/meta-data")),
                   "Subscription.channel.endpoint", "never sent")  # a cloud metadata service
    assert_refused(post(client, subscription("http://127.0.0.1:9/hook", payload="application/fhir+xml")),
                   "Subscription.channel.payload", "application/fhir+json")
    assert_refused(post(client, subscription("http://127.0.0.1:9/hook", header=["no colon here"])),
                   "Subscription.channel.header[0]")
    past = dict(subscription("http://127.0.0.1:9/hook"), end="2001-01-01T00:00:00Z")
    assert_refused(post(client, past), "Subscription.end", "past")
    assert client.get("/fhir/Subscription?_summary=count").get_json()["total"] == 0


def test_validate_operation_reports_bad_criteria_without_storing(client):
    sub = subscription("http://127.0.0.1:9/hook", criteria="Observation?nope=1")
    response = client.post("/fhir/Subscription/$validate", data=json.dumps(sub), headers={"Content-Type": FHIR_JSON})
    issues = response.get_json()["issue"]
    assert any("Subscription.criteria" in i.get("expression", []) for i in issues)


# -- notifications ----------------------------------------------------------------------------------
def test_a_matching_write_notifies_once_with_the_channel_headers_and_an_empty_body(client, server, receiver):
    subscribe(client, receiver, header=["Authorization: Bearer hook-secret", "X-Tenant: dmp"])
    assert post(client, observation()).status_code == 201
    settle(server)
    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    assert (got.method, got.path, got.body) == ("POST", "/hook", b"")
    assert got.headers["authorization"] == "Bearer hook-secret" and got.headers["x-tenant"] == "dmp"


def test_non_matching_writes_do_not_notify(client, server, receiver):
    subscribe(client, receiver)
    post(client, observation(patient="p2"))  # another patient
    post(client, observation(code="718-7"))  # another code
    post(client, {"resourceType": "Patient", "id": "x", "name": [{"family": "Martin"}]})  # another type
    settle(server)
    assert receiver.requests == []


def test_a_payload_subscription_receives_the_version_by_put_on_the_endpoint_base(client, server, receiver):
    subscribe(client, receiver, payload="application/fhir+json")
    created = post(client, observation()).get_json()
    settle(server)
    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    assert (got.method, got.path) == ("PUT", f"/hook/Observation/{created['id']}")
    assert got.headers["content-type"].startswith(FHIR_JSON)
    assert json.loads(got.body) == created


def test_updates_notify_and_an_update_that_stops_matching_does_not(client, server, receiver):
    subscribe(client, receiver, payload="application/fhir+json")
    created = post(client, observation()).get_json()
    changed = dict(created, status="amended")
    assert put(client, changed).status_code == 200
    moved = dict(changed, subject={"reference": "Patient/p2"})
    assert put(client, moved).status_code == 200
    settle(server)
    versions = sorted(json.loads(r.body)["meta"]["versionId"] for r in receiver.requests)
    assert versions == ["1", "2"]


def test_criteria_use_every_search_feature_as_search_does(client, server, receiver):
    put(client, {"resourceType": "Patient", "id": "p1", "name": [{"family": "Martin"}], "gender": "female"})
    put(client, {"resourceType": "Patient", "id": "p2", "name": [{"family": "Durand"}], "gender": "male"})
    subscribe(client, receiver, criteria="Observation?subject:Patient.gender=female&status:not=preliminary")
    post(client, observation(status="preliminary"))  # excluded by the modifier
    post(client, observation(patient="p2"))  # the chain: a male patient
    post(client, observation())  # final, female patient: matches
    settle(server)
    assert len(receiver.requests) == 1


def test_a_transaction_notifies_after_its_commit(client, server, receiver):
    subscribe(client, receiver)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(patient="p2"), "request": {"method": "POST", "url": "Observation"}}]}
    assert client.post("/fhir", data=json.dumps(bundle), headers={"Content-Type": FHIR_JSON}).status_code == 200
    settle(server)
    assert len(receiver.requests) == 1


def test_deletion_notifies_subscriptions_the_deleted_resource_matched(client, server, receiver):
    subscribe(client, receiver)  # empty notifications
    subscribe(client, receiver, payload="application/fhir+json")
    created = post(client, observation()).get_json()
    other = post(client, observation(patient="p2")).get_json()
    settle(server)
    receiver.requests.clear()
    assert client.delete(f"/fhir/Observation/{created['id']}").status_code in (200, 204)
    assert client.delete(f"/fhir/Observation/{other['id']}").status_code in (200, 204)
    settle(server)
    got = sorted((r.method, r.path, r.body) for r in receiver.requests)
    assert got == [("DELETE", f"/hook/Observation/{created['id']}", b""), ("POST", "/hook", b"")]


def test_a_subscription_turned_off_or_deleted_stops_notifying(client, server, receiver):
    sub = subscribe(client, receiver)
    assert put(client, dict(sub, status="off")).status_code == 200
    post(client, observation())
    second = subscribe(client, receiver)
    assert client.delete(f"/fhir/Subscription/{second['id']}").status_code in (200, 204)
    post(client, observation())
    settle(server)
    assert receiver.requests == []


# -- failures -----------------------------------------------------------------------------------------
def test_failures_are_retried_then_the_subscription_is_in_error_with_the_reason(client, server, receiver):
    sub = subscribe(client, receiver)
    receiver.always = 503
    post(client, observation())
    settle(server)
    assert len(receiver.requests) == 4  # the first attempt and 3 retries
    body = client.get(f"/fhir/Subscription/{sub['id']}").get_json()
    assert body["status"] == "error"
    assert "503" in body["error"] and "4 attempts" in body["error"] and receiver.url in body["error"]
    assert body["meta"]["versionId"] == "2"  # the server's own version
    assert {"system": OWNER_SYSTEM, "code": "anonymous"} in body["meta"]["tag"]

    post(client, observation())  # still failing: tried again, no new version per failed notification
    settle(server)
    assert len(receiver.requests) == 8
    assert client.get(f"/fhir/Subscription/{sub['id']}").get_json()["meta"]["versionId"] == "2"

    receiver.always = None  # the endpoint is back: the next notification succeeds and clears the error
    post(client, observation())
    settle(server)
    body = client.get(f"/fhir/Subscription/{sub['id']}").get_json()
    assert body["status"] == "active" and "error" not in body


def test_a_transient_failure_is_retried_and_delivered_without_error(client, server, receiver):
    sub = subscribe(client, receiver)
    receiver.answers = [500, 500]
    post(client, observation())
    settle(server)
    assert [r.method for r in receiver.requests] == ["POST"] * 3
    assert client.get(f"/fhir/Subscription/{sub['id']}").get_json()["status"] == "active"


def test_an_unreachable_endpoint_puts_the_subscription_in_error(client, server, receiver):
    response = post(client, subscription("http://127.0.0.1:9/nobody-listens"))
    post(client, observation())
    settle(server)
    body = client.get(f"/fhir/Subscription/{response.get_json()['id']}").get_json()
    assert body["status"] == "error" and "could not be reached" in body["error"]


def test_a_client_reactivates_a_subscription_in_error_by_asking_again(client, server, receiver):
    sub = subscribe(client, receiver)
    receiver.always = 500
    post(client, observation())
    settle(server)
    current = client.get(f"/fhir/Subscription/{sub['id']}").get_json()
    assert current["status"] == "error"
    again = put(client, dict(current, status="requested")).get_json()
    assert again["status"] == "active" and "error" not in again


def test_an_expired_subscription_is_turned_off_instead_of_notifying(client, server, receiver, store):
    sub = subscribe(client, receiver)
    soon = datetime.now(timezone.utc) + timedelta(seconds=1)
    sub["end"] = soon.isoformat(timespec="seconds").replace("+00:00", "Z")
    assert put(client, sub).status_code == 200
    definition = server.subscriptions.get(sub["id"])
    server.subscriptions._by_type["Observation"] = [  # as if the end had passed (no sleeping in tests)
        type(definition)(**{**definition.__dict__, "end": datetime.now(timezone.utc) - timedelta(seconds=1)})]
    post(client, observation())
    settle(server)
    assert receiver.requests == []
    assert client.get(f"/fhir/Subscription/{sub['id']}").get_json()["status"] == "off"


# -- start-up and other processes -----------------------------------------------------------------------
def test_active_subscriptions_are_found_in_the_store_at_start_up(client, receiver, store, engine):
    sub = subscribe(client, receiver)
    other = create_app(Settings(insecure_no_auth=True), store=store, gate=OpenGate(), engine=engine)
    server = other.extensions["fhir"]
    quick(server)
    try:
        assert [s.id for s in server.subscriptions.active()] == [sub["id"]]
        post(other.test_client(), observation())  # this process committed the write: it delivers
        settle(server)
        assert len(receiver.requests) == 1
    finally:
        server.subscriptions.close()


def test_another_process_picks_up_new_subscriptions_on_its_next_refresh(client, receiver, store, engine):
    other = create_app(Settings(insecure_no_auth=True), store=store, gate=OpenGate(), engine=engine)
    server = other.extensions["fhir"]
    try:
        assert server.subscriptions.active() == []
        sub = subscribe(client, receiver)  # written by the first "process"
        assert server.subscriptions.refresh(force=True)
        assert [s.id for s in server.subscriptions.active()] == [sub["id"]]
    finally:
        server.subscriptions.close()


# -- who may subscribe ------------------------------------------------------------------------------
class LimitedGate(OpenGate):
    """Every principal sees only Patient/p1's Observations (like a patient/ or granular scope)."""

    def principal(self, authorization):
        return Principal("limited-user", client_id="app-1")

    def constrain(self, principal, rtype):
        from fhir_server.search.query import Clause, ReferenceValue
        if rtype == "Observation":
            return [Clause("subject", "reference", None, (ReferenceValue("Patient", "p1"),))]
        return []


def test_a_client_limited_on_the_criteria_type_may_not_subscribe(store, engine):
    app = create_app(Settings(insecure_no_auth=True), store=store, gate=LimitedGate(), engine=engine)
    try:
        response = post(app.test_client(), subscription("http://127.0.0.1:9/hook"))
        assert response.status_code == 403
        assert "Subscription.criteria" in response.get_json()["issue"][0]["expression"]
        assert post(app.test_client(), subscription("http://127.0.0.1:9/hook", criteria="Patient?name=x")) \
            .status_code == 201  # unlimited on Patient: allowed, owner recorded
        stored = app.test_client().get("/fhir/Subscription").get_json()["entry"][0]["resource"]
        assert {"system": OWNER_SYSTEM, "code": "app-1"} in stored["meta"]["tag"]
    finally:
        app.extensions["fhir"].subscriptions.close()


def test_a_subscription_written_outside_the_api_is_stored_off(server, receiver):
    from fhir_server.access.gate import ANONYMOUS
    sub = subscription(receiver.url)
    sub["meta"] = {"tag": [{"system": OWNER_SYSTEM, "code": "forged"}]}
    stored = server.resources.create(ANONYMOUS, "Subscription", sub).resource  # as the loader or $import do
    body = json.loads(stored.body)
    assert body["status"] == "off" and "requested" in body["error"]
    assert "tag" not in body["meta"]
    assert server.subscriptions.active() == []
