"""A local HTTP receiver for rest-hook notifications, and an app whose deliveries retry quickly."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fhir_server.access.gate import OpenGate
from fhir_server.app import create_app
from fhir_server.settings import Settings

from subscription_helpers import quick


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; answers the statuses of ``answers`` in turn (then 200)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    always: int | None = None  # answer this to every request when set
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request: Received) -> int:
        with self.lock:
            self.requests.append(request)
            if self.always is not None:
                return self.always
            return self.answers.pop(0) if self.answers else 200


@pytest.fixture
def receiver():
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status = state.record(Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                           body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def app(store, engine):
    app = create_app(Settings(insecure_no_auth=True, max_body_bytes=1_000_000), store=store, gate=OpenGate(),
                     engine=engine)
    server = app.extensions["fhir"]
    quick(server)
    yield app
    server.subscriptions.close()


@pytest.fixture
def server(app):
    return app.extensions["fhir"]
