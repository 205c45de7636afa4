"""Browser SMART apps call the API from another origin: preflights pass without a token, answers carry CORS."""
from __future__ import annotations


def test_a_preflight_is_answered_without_a_token(client):
    response = client.options("/fhir/Patient", headers={"Origin": "https://app.example",
                                                        "Access-Control-Request-Method": "GET",
                                                        "Access-Control-Request-Headers": "authorization"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


def test_api_answers_expose_the_headers_clients_read(client):
    response = client.get("/fhir/metadata", headers={"Origin": "https://app.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in response.headers["Access-Control-Expose-Headers"]


def test_no_cors_headers_without_an_origin(client):
    assert "Access-Control-Allow-Origin" not in client.get("/fhir/metadata").headers
