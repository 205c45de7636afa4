"""``fhir-server serve``: the production server process, as an EHR or a researcher's client meets it.

The rest of the suite drives the WSGI application in-process; here the real command runs (granian,
worker processes, loopback), answers over HTTP/1.1 with keep-alive, and stops cleanly on SIGTERM,
with every request it answered traced before it exits.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

FHIR_JSON = "application/fhir+json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "fhir-server"
    return ([str(script)] if script.exists() else [sys.executable, "-m", "fhir_server.cli"]) + list(args)


def _start(tmp_path: Path) -> tuple[subprocess.Popen, int, Path]:
    port = _free_port()
    db = tmp_path / "fhir.sqlite3"
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(_command("serve", "--insecure-no-auth", "--port", str(port), "--store",
                                         f"sqlite:///{db}", "--workers", "2"),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, port, db


def _exit_code(proc: subprocess.Popen, log: Path, timeout: float = 45) -> int:
    """The server's exit code; a failure showing its log if it is still running ``timeout`` s later."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout} s after SIGTERM:\n" + log.read_text())


def _stopped(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def served(tmp_path):
    proc, port, db = _start(tmp_path)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/fhir/metadata")
            if conn.getresponse().status == 200:
                conn.close()
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the server did not start:\n" + (tmp_path / "server.log").read_text())
        time.sleep(0.2)
    yield proc, port, db
    _stopped(proc)


def test_serve_answers_fhir_over_keep_alive_and_stops_on_sigterm_with_every_request_traced(served):
    proc, port, db = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"resourceType": "Patient", "name": [{"family": "Lefèvre"}], "birthDate": "1970-01-01"})
    conn.request("POST", "/fhir/Patient", body=body.encode(), headers={"Content-Type": FHIR_JSON})
    created = conn.getresponse()
    assert created.status == 201
    assert created.getheader("ETag") == 'W/"1"'
    location = created.getheader("Location")
    created.read()
    rid = location.split("/Patient/")[1].split("/")[0]
    for _ in range(3):  # the same connection, kept alive
        conn.request("GET", f"/fhir/Patient/{rid}", headers={"Accept": FHIR_JSON})
        read = conn.getresponse()
        assert read.status == 200
        assert read.getheader("Content-Type").startswith(FHIR_JSON)
        assert json.loads(read.read())["name"][0]["family"] == "Lefèvre"
    conn.request("GET", "/fhir/Nothing/1")
    missing = conn.getresponse()
    assert missing.status == 404
    assert json.loads(missing.read())["resourceType"] == "OperationOutcome"
    conn.close()

    os.killpg(proc.pid, signal.SIGTERM)
    assert _exit_code(proc, db.parent / "server.log") == 0
    with sqlite3.connect(db) as store:
        traces = store.execute("SELECT count(*) FROM resources WHERE type='AuditEvent'").fetchone()[0]
    assert traces == 5  # the create, three reads and the refused unknown type: none lost at shutdown


def test_serve_takes_a_large_body_and_refuses_one_over_the_limit(served):
    proc, port, _ = served
    entries = [{"resource": {"resourceType": "Patient", "gender": "other"}, "request": {"method": "POST",
                                                                                         "url": "Patient"}}]
    bundle = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries * 200}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/fhir", body=bundle, headers={"Content-Type": FHIR_JSON})
    answer = conn.getresponse()
    assert answer.status == 200, answer.read()[:500]
    assert len(json.loads(answer.read())["entry"]) == 200
    # a body announced over the limit (16 MiB by default) is refused before it is read
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"POST /fhir/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n"
                    b"Content-Length: %d\r\n\r\n{" % (16 * 1024 * 1024 + 1))
        too_big = http.client.HTTPResponse(raw)
        too_big.begin()
        assert too_big.status == 413
        assert json.loads(too_big.read())["resourceType"] == "OperationOutcome"

def test_serve_refuses_to_run_without_authentication_on_a_public_address():
    done = subprocess.run(_command("serve", "--insecure-no-auth", "--host", "0.0.0.0"), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "non-loopback" in done.stderr


def test_serve_stops_on_sigterm_sent_while_its_workers_are_still_starting(tmp_path):
    # a worker builds its app (a second or more) before granian installs its signal handlers: a stop sent
    # then used to be lost, and the main process waited for that worker forever
    proc, _, _ = _start(tmp_path)
    log = tmp_path / "server.log"
    try:
        deadline = time.monotonic() + 60
        while "Spawning worker-2" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "Started worker-2" not in log.read_text(), "too late to test the start: the worker was ready"
        os.killpg(proc.pid, signal.SIGTERM)
        assert _exit_code(proc, log) == 0, log.read_text()
        assert "refused to gracefully stop" not in log.read_text()
    finally:
        _stopped(proc)
