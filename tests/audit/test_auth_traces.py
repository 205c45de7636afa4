"""Sign-in steps and token issuance are traced with the account as the agent (issue #7 item 9)."""
from __future__ import annotations

import time

import pytest
from audit_helpers import all_traces
from smart_flow import PASSWORD, Env, hidden_fields, pkce_pair

from fhir_server.app import create_app
from fhir_server.audit.model import ACCOUNT_SYSTEM
from fhir_server.settings import Settings


class AppEnv(Env):
    """The whole server (FHIR API, authorization server, traces) on one store."""

    def __init__(self, store, outbox, engine):
        self.store, self.outbox, self.clock = store, outbox, time.time
        self.settings = Settings(otp_outbox=str(outbox))
        self.app = create_app(self.settings, store=store, engine=engine)
        self.smart = self.app.extensions["smart_auth"]
        self.client = self.app.test_client()


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    import auth.passwords
    monkeypatch.setattr(auth.passwords, "N", 2 ** 10)


@pytest.fixture
def env(store, engine, tmp_path):
    return AppEnv(store, tmp_path / "outbox", engine)


def auth_events(env) -> list[dict]:
    return [e for e in all_traces(env) if e["type"]["code"] == "110114"]


def subtype(event: dict) -> str:
    return event["subtype"][0]["code"]


def test_a_wrong_password_is_traced_against_the_account(env):
    account = env.user(username="alice", role="patient", fhir_user="Patient/p1")
    app = env.app_client()
    _, challenge = pkce_pair()
    location = env.start(env.authorize_params(app.id, challenge=challenge)).headers["Location"]
    fields = hidden_fields(env.client.get(location).get_data(as_text=True))
    response = env.client.post("/auth/login", data=dict(fields, username="alice", password="wrong"))
    assert response.status_code == 401
    event, = auth_events(env)
    assert subtype(event) == "password" and event["outcome"] == "8" and event["action"] == "E"
    who = event["agent"][0]
    assert who["requestor"] and who["who"] == {"reference": "Patient/p1",
                                               "identifier": {"system": ACCOUNT_SYSTEM, "value": account.id}}
    assert "wrong username or password" in event["outcomeDesc"]


def test_a_sign_in_and_the_token_it_leads_to_are_traced(env):
    account = env.user(username="alice", role="patient", fhir_user="Patient/p1")
    app = env.app_client()
    code, verifier, _ = env.authorization_code(app.id)
    response = env.exchange(code, verifier, client_id=app.id)
    assert response.status_code == 200, response.get_json()
    password, login, token = auth_events(env)
    assert [subtype(e) for e in (password, login, token)] == ["password", "110122", "token"]
    assert all(e["outcome"] == "0" for e in (password, login, token))
    assert login["subtype"][0]["display"] == "Login"
    for event in (login, token):
        assert event["agent"][0]["who"]["identifier"] == {"system": ACCOUNT_SYSTEM, "value": account.id}
        assert event["agent"][0]["who"]["reference"] == "Patient/p1"
    assert token["agent"][1]["who"]["display"] == app.id  # the application that obtained it
    assert {e["what"]["reference"] for e in token["entity"]} == {"Patient/p1"}
    # shaped like any other trace
    validator = env.app.extensions["fhir"].engine.profiles
    for event in (password, login, token):
        issues = validator.validate_all(event, ["https://dmp.example.org/fhir/StructureDefinition/dmp-auditevent"])
        assert [i for i in issues if i.severity in ("error", "fatal")] == []


def test_a_refused_token_request_is_traced_against_the_client(env):
    response = env.client.post("/auth/token", data={"grant_type": "authorization_code", "code": "nope",
                                                    "client_id": "unknown-app", "redirect_uri": "http://x"})
    assert response.status_code in (400, 401)
    event, = auth_events(env)
    assert subtype(event) == "token" and event["outcome"] in ("4", "8")
    assert event["agent"][0]["who"]["display"] == "unknown-app"
    assert PASSWORD not in str(event)
