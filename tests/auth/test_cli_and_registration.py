"""``fhir-server clients add | users add | launch`` (one JSON object each) and dynamic registration (RFC 7591)."""
from __future__ import annotations

import json

from joserfc.jwk import RSAKey

from fhir_server.cli import main
from smart_flow import PASSWORD, Env


def run(capsys, *argv) -> tuple[int, dict]:
    status = main(list(argv))
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, out  # exactly one JSON object
    return status, json.loads(out)


def test_cli_commands_print_one_json_object(tmp_path, capsys, clock):
    url = f"sqlite:///{tmp_path / 'fhir.sqlite3'}"
    status, user = run(capsys, "users", "add", "--store", url, "--username", "alice", "--password", PASSWORD,
                       "--role", "patient", "--email", "alice@example.org", "--fhir-user", "Patient/p1")
    assert status == 0 and user["username"] == "alice" and user["fhirUser"] == "Patient/p1" and user["id"]
    status, refused = run(capsys, "users", "add", "--store", url, "--username", "alice", "--password",
                          "a long password", "--role", "patient", "--email", "a@example.org")
    assert status == 2 and "taken" in refused["error"]
    status, refused = run(capsys, "users", "add", "--store", url, "--username", "doc", "--password",
                          "a long password", "--role", "practitioner", "--email", "d@example.org",
                          "--fhir-user", "Patient/p1")
    assert status == 2 and "Practitioner" in refused["error"]

    status, public = run(capsys, "clients", "add", "--store", url, "--name", "Patient app", "--public",
                         "--redirect-uri", "http://127.0.0.1:9999/callback", "--scope",
                         "launch/patient patient/*.rs openid fhirUser")
    assert status == 0 and public["client_id"] and "client_secret" not in public
    assert public["token_endpoint_auth_method"] == "none"
    status, confidential = run(capsys, "clients", "add", "--store", url, "--name", "EHR",
                               "--redirect-uri", "https://ehr.example.org/cb")
    assert status == 0 and confidential["client_secret"]
    assert confidential["token_endpoint_auth_method"] == "client_secret_basic"
    key = RSAKey.generate_key(2048, auto_kid=True)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    status, backend = run(capsys, "clients", "add", "--store", url, "--name", "Insurer", "--grant",
                          "client_credentials", "--jwks", str(jwks_file), "--scope", "system/*.rs")
    assert status == 0 and "client_secret" not in backend
    assert backend["token_endpoint_auth_method"] == "private_key_jwt" and backend["grant_types"] == ["client_credentials"]
    status, jwks_url = run(capsys, "clients", "add", "--store", url, "--name", "Feed", "--grant",
                           "client_credentials", "--jwks-url", "https://feed.example.org/jwks.json")
    assert status == 0 and jwks_url["token_endpoint_auth_method"] == "private_key_jwt"
    private_file = tmp_path / "private.json"
    private_file.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    status, refused = run(capsys, "clients", "add", "--store", url, "--name", "Oops", "--grant",
                          "client_credentials", "--jwks", str(private_file))
    assert status == 2 and "private" in refused["error"]

    status, launch = run(capsys, "launch", "--store", url, "--patient", "p1", "--user", "alice")
    assert status == 0 and launch["launch"] and launch["patient"] == "p1"
    status, refused = run(capsys, "launch", "--store", url, "--patient", "p1", "--user", "nobody")
    assert status == 2

    # a running server on the same store sees all of it at once
    from fhir_server.store.sqlite import SQLiteStore
    store = SQLiteStore(tmp_path / "fhir.sqlite3")
    env = Env(store, tmp_path / "outbox", clock)
    assert env.smart.client(public["client_id"]) is not None
    assert env.smart.launch_context(launch["launch"])["patient"] == "p1"
    code, verifier, _ = env.authorization_code(public["client_id"])
    body = env.exchange(code, verifier, client_id=public["client_id"]).json
    assert body["patient"] == "p1"
    store.close()


def test_cli_reads_the_store_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FHIR_SERVER_STORE", f"sqlite:///{tmp_path / 'env.sqlite3'}")
    status, launch = run(capsys, "launch", "--patient", "p9")
    assert status == 0 and (tmp_path / "env.sqlite3").exists()



def test_clients_revoke_withdraws_a_client_from_the_token_endpoint(tmp_path, capsys, clock):
    url = f"sqlite:///{tmp_path / 'fhir.sqlite3'}"
    _, public = run(capsys, "clients", "add", "--store", url, "--name", "Patient app", "--public",
                    "--redirect-uri", "http://127.0.0.1:9999/callback")
    status, revoked = run(capsys, "clients", "revoke", "--store", url, public["client_id"])
    assert status == 0 and revoked["client_id"] == public["client_id"] and revoked["revoked_at"]
    status, refused = run(capsys, "clients", "revoke", "--store", url, "no-such-client")
    assert status == 2 and "no-such-client" in refused["error"]
    from fhir_server.store.sqlite import SQLiteStore
    store = SQLiteStore(tmp_path / "fhir.sqlite3")
    env = Env(store, tmp_path / "outbox", clock)
    assert env.smart.client(public["client_id"]) is None  # unknown to the token endpoint
    assert env.smart.authority.client_revoked(public["client_id"])
    store.close()

def test_dynamic_registration_of_a_public_app(env):
    response = env.client.post("/auth/register", json={
        "client_name": "Registered app", "redirect_uris": ["http://127.0.0.1:9999/callback"],
        "token_endpoint_auth_method": "none", "grant_types": ["authorization_code", "refresh_token"],
        "scope": "launch/patient patient/*.rs offline_access"})
    assert response.status_code == 201, response.json
    body = response.json
    assert body["client_id"] and "client_secret" not in body
    env.user()
    code, verifier, _ = env.authorization_code(body["client_id"], "launch/patient patient/*.rs offline_access")
    tokens = env.exchange(code, verifier, client_id=body["client_id"]).json
    assert tokens["patient"] == "p1" and tokens["refresh_token"]


def test_dynamic_registration_of_a_confidential_app(env):
    response = env.client.post("/auth/register", json={
        "client_name": "Secret app", "redirect_uris": ["http://127.0.0.1:9999/callback"]})
    assert response.status_code == 201, response.json
    body = response.json
    assert body["client_secret"]
    env.user()
    code, verifier, _ = env.authorization_code(body["client_id"])
    assert env.exchange(code, verifier, auth=(body["client_id"], body["client_secret"])).status_code == 200


def test_dynamic_registration_never_gives_system_access(env):
    for metadata in ({"client_name": "x", "grant_types": ["client_credentials"], "token_endpoint_auth_method":
                      "client_secret_basic"},
                     {"client_name": "x", "redirect_uris": ["http://127.0.0.1:9/cb"], "scope": "system/*.rs"},
                     {"client_name": "x", "redirect_uris": ["http://evil.example.org/cb"]},
                     {"client_name": "x", "redirect_uris": ["http://127.0.0.1:9/cb"],
                      "token_endpoint_auth_method": "private_key_jwt"}):
        response = env.client.post("/auth/register", json=metadata)
        assert response.status_code == 400, (metadata, response.json)
        assert response.json["error"] == "invalid_client_metadata"
