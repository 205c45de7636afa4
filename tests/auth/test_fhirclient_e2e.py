"""End to end with the SMART Python client ``fhirclient`` against a live server on 127.0.0.1.

A standalone patient launch with PKCE: fhirclient builds the authorize URL, a requests session plays
the person (sign-in form, code read from the development outbox, approval), fhirclient handles the
redirect and exchanges the code; the token carries the patient and scope and introspects as active.
"""
from __future__ import annotations

import json
import re
import threading
import time

import pytest

from auth.registry import add_user, register_client
from fhir_server.app import create_app
from fhir_server.settings import Settings

fhirclient = pytest.importorskip("fhirclient.client")
requests = pytest.importorskip("requests")

REDIRECT = "http://127.0.0.1:1/smart-callback"  # never contacted: the test reads the redirect itself
SCOPE = "launch/patient patient/*.rs openid fhirUser offline_access"


@pytest.fixture
def live_server(tmp_path, engine):
    from werkzeug.serving import make_server

    from backends import make_store
    store = make_store("sqlite", tmp_path)
    outbox = tmp_path / "outbox"
    app = create_app(Settings(otp_outbox=str(outbox)), store=store, engine=engine)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app, outbox
    finally:
        server.shutdown()
        server.server_close()
        store.close()


def hidden(html: str) -> dict:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def smart_client(base: str, client_id: str):
    """fhirclient configured from the server's CapabilityStatement when it announces SMART, else from
    the .well-known/smart-configuration document (the same endpoints)."""
    fhir_base = base + "/fhir"
    metadata = requests.get(fhir_base + "/metadata", headers={"Accept": "application/fhir+json"}, timeout=10).json()
    security = ((metadata.get("rest") or [{}])[0]).get("security") or {}
    announced = any("oauth-uris" in e.get("url", "") for e in security.get("extension", []))
    settings = {"app_id": client_id, "api_base": fhir_base, "redirect_uri": REDIRECT, "scope": SCOPE}
    if announced:
        return fhirclient.FHIRClient(settings=settings)
    config = requests.get(fhir_base + "/.well-known/smart-configuration", timeout=10).json()
    state = {"app_id": client_id, "scope": SCOPE, "redirect": REDIRECT,
             "server": {"base_uri": fhir_base + "/", "auth_type": "oauth2",
                        "auth": {"app_id": client_id, "aud": fhir_base, "redirect_uri": REDIRECT,
                                 "authorize_uri": config["authorization_endpoint"],
                                 "token_uri": config["token_endpoint"]}}}
    return fhirclient.FHIRClient(state=state)


def seed(store, engine) -> None:
    """Two patients with one result each, written by an unauthenticated app on the same store."""
    loader = create_app(Settings(insecure_no_auth=True), store=store, engine=engine).test_client()
    for pid, family in (("p1", "Martin"), ("p2", "Durand")):
        loader.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "name": [{"family": family}]})
        loader.put(f"/fhir/Observation/o{pid[1]}", json={
            "resourceType": "Observation", "id": f"o{pid[1]}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
            "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 4.1, "unit": "mmol/L"}})


def test_standalone_launch_with_fhirclient(live_server, engine):
    base, app, outbox = live_server
    seed(app.extensions["fhir"].store, engine)
    smart = app.extensions["smart_auth"]
    add_user(smart.store, username="alice", password="correct horse battery", role="patient", now=time.time(),
             email="alice@example.org", fhir_user="Patient/p1")
    record, _ = register_client(smart.store, name="fhirclient app", now=time.time(), redirect_uris=[REDIRECT],
                                public=True)
    client = smart_client(base, record["client_id"])

    authorize_url = client.authorize_url
    assert "code_challenge=" in authorize_url and "code_challenge_method=S256" in authorize_url

    browser = requests.Session()
    page = browser.get(authorize_url, timeout=10)  # → 303 to the sign-in page
    assert page.status_code == 200 and 'name="password"' in page.text
    page = browser.post(f"{base}/auth/login", data=dict(hidden(page.text), username="alice",
                                                         password="correct horse battery"), timeout=10)
    assert page.status_code == 200 and 'name="code"' in page.text
    message = json.loads(sorted(outbox.glob("*.json"))[-1].read_text())
    assert message["to"] == "alice@example.org"
    page = browser.post(f"{base}/auth/code", data=dict(hidden(page.text), code=message["code"]), timeout=10)
    assert page.status_code == 200 and 'name="approve"' in page.text
    response = browser.post(f"{base}/auth/approve", data=dict(hidden(page.text), approve="approve"),
                            allow_redirects=False, timeout=10)
    assert response.status_code == 302
    callback = response.headers["Location"]
    assert callback.startswith(REDIRECT + "?") and "code=" in callback

    client.handle_callback(callback)  # fhirclient checks state and exchanges the code with its PKCE verifier
    assert client.patient_id == "p1"
    context = client.launch_context
    assert context["patient"] == "p1" and context["fhirUser"] == "Patient/p1"
    assert set(context["scope"].split()) == set(SCOPE.split())
    access_token = client.server.auth.access_token
    claims = smart.authority.verify(access_token, audience=base + "/fhir", issuer=base + "/auth")
    assert claims["patient"] == "p1" and claims["role"] == "patient" and claims["client_id"] == record["client_id"]

    info = requests.post(f"{base}/auth/introspect", data={"token": access_token, "client_id": record["client_id"]},
                         timeout=10).json()
    assert info["active"] is True and info["patient"] == "p1" and info["scope"] == context["scope"]

    # then reads, with fhirclient's own models: the patient's record, and nothing of another patient
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient
    assert Patient.read("p1", client.server).name[0].family == "Martin"
    mine = list(Observation.where({"patient": "p1"}).perform_resources_iter(client.server))
    assert [o.id for o in mine] == ["o1"]
    assert [o.id for o in Observation.where({"code": "2823-3"}).perform_resources_iter(client.server)] == ["o1"]
    with pytest.raises(Exception, match="404"):
        Patient.read("p2", client.server)

    # and the refresh token works through fhirclient too, keeping the patient
    assert client.reauthorize()
    assert client.launch_context["patient"] == "p1"
