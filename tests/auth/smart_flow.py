"""Helpers for the authorization server tests: an app with auth on a store, a fake clock, the
development outbox, and a small "browser" that walks the sign-in pages the way a person would."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlsplit

from flask import Flask

import auth
from auth.registry import add_user, register_client

from fhir_server.settings import Settings

BASE = "http://localhost"
FHIR_BASE = BASE + "/fhir"
REDIRECT = "http://127.0.0.1:9999/callback"
PASSWORD = "correct horse battery"


class FakeClock:
    def __init__(self, start: float | None = None):
        self.t = float(start if start is not None else time.time())

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def hidden_fields(html: str) -> dict:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def query(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class Env:
    """One app with the authorization server, its store, clock and outbox."""

    def __init__(self, store, outbox: Path, clock: FakeClock, **settings):
        self.store, self.outbox, self.clock = store, outbox, clock
        self.settings = Settings(otp_outbox=str(outbox), **settings)
        self.app = Flask("auth-test")
        self.smart = auth.init_app(self.app, SimpleNamespace(settings=self.settings, store=store), clock=clock)
        self.client = self.app.test_client()

    # -- registry ---------------------------------------------------------------------------------------
    def user(self, username="alice", role="patient", fhir_user="Patient/p1", email="alice@example.org",
             phone=None, password=PASSWORD):
        return add_user(self.smart.store, username=username, password=password, role=role, now=self.clock(),
                        email=email, phone=phone, fhir_user=fhir_user)

    def app_client(self, public=True, scope=None, jwks=None, grant="authorization_code", redirect_uris=(REDIRECT,)):
        record, secret = register_client(self.smart.store, name="Test app", now=self.clock(),
                                         redirect_uris=list(redirect_uris), public=public, scope=scope, jwks=jwks,
                                         grant=grant)
        return SimpleNamespace(id=record["client_id"], secret=secret, record=record)

    # -- outbox -----------------------------------------------------------------------------------------
    def messages(self) -> list[dict]:
        if not self.outbox.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.outbox.glob("*.json"))]

    def last_code(self) -> str:
        return self.messages()[-1]["code"]

    # -- the browser side ---------------------------------------------------------------------------------
    def authorize_params(self, client_id, scope="launch/patient patient/*.rs openid fhirUser", challenge=None,
                         **extra):
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
                  "state": "state-" + secrets.token_hex(8), "aud": FHIR_BASE}
        if challenge is not None:
            params.update(code_challenge=challenge, code_challenge_method="S256")
        params.update(extra)
        return {k: v for k, v in params.items() if v is not None}

    def start(self, params: dict, browser=None):
        browser = browser or self.client
        return browser.get("/auth/authorize?" + urlencode(params))

    def sign_in(self, location: str, username="alice", password=PASSWORD, browser=None):
        """From the login page to the page after the code form; returns that response."""
        browser = browser or self.client
        page = browser.get(location)
        assert page.status_code == 200, page.get_data(as_text=True)
        fields = hidden_fields(page.get_data(as_text=True))
        response = browser.post("/auth/login", data=dict(fields, username=username, password=password))
        assert response.status_code == 303, response.get_data(as_text=True)
        page = browser.get(response.headers["Location"])
        fields = hidden_fields(page.get_data(as_text=True))
        return browser.post("/auth/code", data=dict(fields, code=self.last_code()))

    def approve(self, location: str, browser=None, decision="approve", **form):
        browser = browser or self.client
        page = browser.get(location)
        assert page.status_code == 200, page.get_data(as_text=True)
        fields = hidden_fields(page.get_data(as_text=True))
        return browser.post("/auth/approve", data=dict(fields, **{decision: decision}, **form))

    def authorization_code(self, client_id, scope="launch/patient patient/*.rs openid fhirUser", username="alice",
                           browser=None, **extra) -> tuple[str, str, dict]:
        """The whole browser part: returns (code, verifier, params)."""
        verifier, challenge = pkce_pair()
        params = self.authorize_params(client_id, scope, challenge, **extra)
        response = self.start(params, browser)
        assert response.status_code == 303, response.get_data(as_text=True)
        response = self.sign_in(response.headers["Location"], username=username, browser=browser)
        assert response.status_code == 303, response.get_data(as_text=True)
        response = self.approve(response.headers["Location"], browser=browser)
        assert response.status_code == 302, response.get_data(as_text=True)
        location = response.headers["Location"]
        assert location.startswith(REDIRECT)
        back = query(location)
        assert back["state"] == params["state"]
        return back["code"], verifier, params

    def exchange(self, code, verifier, client_id=None, auth=None, **extra):
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "code_verifier": verifier}
        if client_id:
            data["client_id"] = client_id
        data.update(extra)
        headers = {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        return self.client.post("/auth/token", data=data, headers=headers)


