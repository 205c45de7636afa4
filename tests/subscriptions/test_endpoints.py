"""Where notifications may go: the operator's allow-list, and never to link-local, unspecified or multicast
addresses (a cloud metadata service answers at 169.254.169.254)."""
from __future__ import annotations

import json

import pytest

from fhir_server.access.gate import OpenGate
from fhir_server.app import create_app
from fhir_server.settings import Settings
from fhir_server.subscriptions.endpoints import EndpointPolicy

from subscription_helpers import quick
from test_subscriptions import assert_refused, observation, post, settle, subscription

ALLOWED = "https://hooks.example.org/fhir"


@pytest.mark.parametrize("endpoint, allowed", [
    ("https://hooks.example.org/fhir", True),
    ("https://HOOKS.example.org:443/fhir/notify", True),
    ("https://hooks.example.org/fhirx", False),  # a prefix ends at a path segment
    ("http://hooks.example.org/fhir", False),  # another scheme
    ("https://hooks.example.org:8443/fhir", False),  # another port
    ("https://evil.example/fhir", False),
])
def test_the_allow_list_holds_url_prefixes(endpoint, allowed):
    assert (EndpointPolicy([ALLOWED]).refusal(endpoint) is None) is allowed


@pytest.mark.parametrize("endpoint", ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/hook",
                                      "http://0.0.0.0:8080/hook", "http://[::ffff:169.254.169.254]/",
                                      "http://224.0.0.1/hook"])
def test_link_local_unspecified_and_multicast_addresses_are_refused_whatever_the_list(endpoint):
    assert "never sent" in EndpointPolicy().refusal(endpoint)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "https://example.org/x"])
def test_without_a_list_other_http_endpoints_are_accepted(endpoint):
    assert EndpointPolicy().refusal(endpoint) is None


def test_a_delivery_is_refused_when_the_name_resolves_to_a_forbidden_address():
    addresses = {"metadata.internal": ["169.254.169.254"], "hooks.internal": ["10.0.0.7"]}
    policy = EndpointPolicy(resolver=lambda host, port: addresses[host])
    with pytest.raises(OSError, match="169.254.169.254"):
        policy.check_delivery("http://metadata.internal/latest")
    policy.check_delivery("http://hooks.internal/hook")  # allowed: no error


def test_a_prefix_must_be_an_http_url():
    with pytest.raises(ValueError, match="ftp://x"):
        EndpointPolicy(["ftp://x/"])


@pytest.fixture
def guarded(store, engine, receiver):
    prefix = receiver.url.rsplit("/", 1)[0]  # http://127.0.0.1:<port>
    app = create_app(Settings(insecure_no_auth=True, subscription_endpoints=(prefix,)), store=store,
                     gate=OpenGate(), engine=engine)
    quick(app.extensions["fhir"])
    yield app
    app.extensions["fhir"].subscriptions.close()


def test_a_subscription_outside_the_allow_list_is_refused_and_one_inside_is_delivered(guarded, receiver):
    client = guarded.test_client()
    assert_refused(post(client, subscription("http://127.0.0.2:9/hook")), "Subscription.channel.endpoint",
                   "operator")
    assert client.get("/fhir/Subscription?_summary=count").get_json()["total"] == 0
    assert post(client, subscription(receiver.url)).status_code == 201
    assert post(client, observation()).status_code == 201
    settle(guarded.extensions["fhir"])
    assert [r.method for r in receiver.requests] == ["POST"]


def test_a_list_tightened_after_the_fact_stops_deliveries_with_the_reason(guarded, receiver):
    client, server = guarded.test_client(), guarded.extensions["fhir"]
    created = post(client, subscription(receiver.url)).get_json()
    server.subscriptions.endpoints = EndpointPolicy(["https://hooks.example.org/fhir"])  # the operator's new list
    assert post(client, observation()).status_code == 201
    settle(server)
    assert receiver.requests == []
    stored = client.get(f"/fhir/Subscription/{created['id']}").get_json()
    assert stored["status"] == "error" and "operator" in stored["error"], json.dumps(stored)


def test_the_allow_list_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("FHIR_SERVER_SUBSCRIPTION_ENDPOINTS", f" {ALLOWED}, http://10.0.0.7:8080/hooks ,")
    assert Settings.from_env().subscription_endpoints == (ALLOWED, "http://10.0.0.7:8080/hooks")
    monkeypatch.delenv("FHIR_SERVER_SUBSCRIPTION_ENDPOINTS")
    assert Settings.from_env().subscription_endpoints == ()
