"""The one-time code senders: SMTP, HTTP SMS gateway, outbox, and what the login page does when sending fails."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from auth.senders import (ChannelSender, HTTPSMSSender, OTPMessage, OutboxSender, SendError, SMTPSender,
                          build_sender)
from smart_flow import hidden_fields, pkce_pair

MESSAGE = OTPMessage(to="+33612345678", channel="sms", code="123456", text="Your sign-in code is 123456.")


def test_http_sms_gateway():
    received = []

    class Gateway(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((self.headers.get("Authorization"),
                             json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        HTTPSMSSender(f"http://127.0.0.1:{server.server_port}/sms", token="t0k").send(MESSAGE)
        assert received == [("Bearer t0k", {"to": "+33612345678", "text": "Your sign-in code is 123456."})]
        with pytest.raises(SendError):
            HTTPSMSSender("http://127.0.0.1:1/sms", timeout=2).send(MESSAGE)
    finally:
        server.shutdown()
        server.server_close()


def test_smtp_sender(monkeypatch):
    sent = []

    class FakeSMTP:
        def __init__(self, host, port, timeout):
            sent.append(("connect", host, port))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def starttls(self, context=None):
            sent.append(("starttls",))

        def login(self, user, password):
            sent.append(("login", user, password))

        def send_message(self, mail):
            sent.append(("mail", mail["From"], mail["To"], mail.get_content().strip()))

    import smtplib
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    sender = SMTPSender("smtp://dmp%40example.org:p%40ss@mail.example.org:587?from=dmp@example.org&starttls=1")
    sender.send(OTPMessage(to="alice@example.org", channel="email", code="654321", text="Code 654321"))
    assert sent == [("connect", "mail.example.org", 587), ("starttls",), ("login", "dmp@example.org", "p@ss"),
                    ("mail", "dmp@example.org", "alice@example.org", "Code 654321")]


def test_build_sender_routes_channels(tmp_path):
    settings = SimpleNamespace(otp_outbox=None, smtp_url="smtp://localhost", sms_gateway_url="http://127.0.0.1:1/x")
    sender = build_sender(settings)
    assert sender.channels == ("email", "sms")
    assert [type(s) for s in sender.senders] == [SMTPSender, HTTPSMSSender]
    outbox = build_sender(SimpleNamespace(otp_outbox=str(tmp_path), smtp_url=None, sms_gateway_url=None))
    assert isinstance(outbox.senders[0], OutboxSender)
    with pytest.raises(SendError):
        ChannelSender([]).send(MESSAGE)


def test_login_explains_when_no_code_can_be_sent(sqlite_env):
    env = sqlite_env
    env.smart.codes.sender = ChannelSender([])  # no --otp-outbox, no SMTP, no gateway
    env.user()
    app = env.app_client()
    response = env.start(env.authorize_params(app.id, challenge=pkce_pair()[1]))
    fields = hidden_fields(env.client.get(response.headers["Location"]).get_data(as_text=True))
    from smart_flow import PASSWORD
    response = env.client.post("/auth/login", data=dict(fields, username="alice", password=PASSWORD))
    assert response.status_code == 503 and "could not be sent" in response.get_data(as_text=True)
