#!/usr/bin/env python3
"""Where a request's CPU goes: the parts of a create, a read and a trace, measured in one process.

The HTTP benchmarks (bench/crud.py, bench/audit.py) say how fast the served app is; this one says why,
so that an optimisation starts from the part that costs. It builds the app as ``serve`` does (SQLite
store in a temporary directory, no authentication, start-up heap frozen) and calls its WSGI entry point
directly, without a server or a client, on bench/crud.py's generated resources, counting the CPU time
of the calling thread (``time.thread_time``):

1. create (validated POST of a Patient, then of Observations), untraced: the whole WSGI call, and inside
   it the service's validation, index extraction and store transaction (one commit per create);
2. read by id, untraced: the whole WSGI call;
3. traces: the request thread's share (build the AuditEvent, stamp, serialise and index it) and the writer
   thread's (store it) for batches of 1 to 500 traces per transaction, as the writer thread forms them (few
   under light load, up to 500 under heavy load); a search's trace, with and without the record rules'
   labels for hidden items (docs/adr/0012-traces-of-hidden-items.md);
4. the store alone: one transaction writing one small resource, and its COMMIT.

Each figure is the median of ``--repeat`` runs. CPU of the calling thread only: the trace writer's own
thread is measured in step 3, where it runs in the calling thread.

Usage: .venv/bin/python bench/costs.py [--write]   (--help for the options)
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import crud  # noqa: E402  (generated resources)
from harness import loadavg, machine_facts, write_section  # noqa: E402

SECTION = "## Where a request's CPU goes"
FHIR_JSON = "application/fhir+json"


def make_app(directory: str, audit: bool) -> Any:
    from fhir_server.app import create_app, settle_heap
    from fhir_server.settings import Settings
    app = create_app(Settings(store_url=f"sqlite:///{directory}/costs.sqlite3", insecure_no_auth=True, audit=audit),
                     bulk_worker=True)
    settle_heap()
    return app


def environ(method: str, path: str, body: dict | None = None) -> dict:
    from werkzeug.test import EnvironBuilder
    headers = {"Accept": FHIR_JSON}
    data = None
    if body is not None:
        headers["Content-Type"] = FHIR_JSON
        data = json.dumps(body).encode()
    return EnvironBuilder(path=path, method=method, data=data, headers=headers).get_environ()


def call(app: Any, env: dict) -> tuple[str, bytes]:
    status: list[str] = []
    body = b"".join(app(dict(env), lambda s, h, e=None: status.append(s)))
    if not status[0].startswith("2"):  # a figure for a refused request would measure the wrong path
        raise RuntimeError(f"{env['REQUEST_METHOD']} {env['PATH_INFO']} -> {status[0]}: {body[:300]!r}")
    return status[0], body


class Parts:
    """Thread CPU spent inside chosen methods, by label (wrapped on one object; the wrapper's own cost is small)."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()

    def wrap(self, obj: Any, name: str, label: str) -> None:
        inner = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.thread_time() - start
        setattr(obj, name, timed)


def per_item_ms(action: Callable[[], None], count: int) -> float:
    start = time.thread_time()
    action()
    return (time.thread_time() - start) / count * 1000


def create_and_read(count: int, seed: int) -> dict[str, float]:
    """Untraced creates (Patients, then Observations) and reads; ms of CPU per request and per part."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as directory:
        app = make_app(directory, audit=False)
        server = app.extensions["fhir"]
        parts = Parts()
        parts.wrap(server.resources, "validate", "validate")
        parts.wrap(server.resources, "_index_for", "index")
        parts.wrap(server.store, "atomically", "store")
        patients = [environ("POST", "/fhir/Patient", crud.make_patient(rng)) for _ in range(count + 50)]
        ids = [json.loads(call(app, env)[1])["id"] for env in patients[:50]]  # warm-up, and subjects
        out: dict[str, float] = {}
        for kind, envs in (
                ("Patient", patients[50:]),
                ("Observation", [environ("POST", "/fhir/Observation", crud.make_observation(
                    rng, {"reference": f"Patient/{rng.choice(ids)}"})) for _ in range(count)])):
            parts.seconds.clear()
            created: list[str] = []
            out[f"create {kind}"] = per_item_ms(
                lambda: created.extend(json.loads(call(app, env)[1])["id"] for env in envs), count)
            for label in ("validate", "index", "store"):
                out[f"create {kind}: {label}"] = parts.seconds[label] / count * 1000
            ids.extend(created if kind == "Patient" else ())
        reads = [environ("GET", f"/fhir/Patient/{rng.choice(ids)}") for _ in range(count * 2)]
        for env in reads[:100]:
            call(app, env)
        out["read Patient"] = per_item_ms(lambda: [call(app, env) for env in reads], len(reads))
        metadata = [environ("GET", "/fhir/metadata") for _ in range(max(count // 10, 10))]
        call(app, metadata[0])
        out["read CapabilityStatement (GET /metadata)"] = per_item_ms(
            lambda: [call(app, env) for env in metadata], len(metadata))
    return out


def traces(count: int, seed: int, batches: tuple[int, ...]) -> dict[str, float]:
    """A read's trace: its building in the request thread, then the writer's CPU per trace for several batch
    sizes."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as directory:
        app = make_app(directory, audit=True)
        auditor = app.extensions["fhir_audit"]
        ids = [json.loads(call(app, environ("POST", "/fhir/Patient", crud.make_patient(rng)))[1])["id"]
               for _ in range(200)]
        auditor.flush(60)
        records: list = []
        auditor.writer.submit = records.append  # capture the records instead of queueing them
        for _ in range(count * len(batches)):
            call(app, environ("GET", f"/fhir/Patient/{rng.choice(ids)}"))
        prepare, write = auditor.writer.prepare, auditor.writer.write_batch
        write([prepare(r) for r in records[:10]])  # warm-up
        out = {}
        rows = []
        out["trace: build and index (request thread)"] = per_item_ms(
            lambda: rows.extend(prepare(r) for r in records), len(records))
        for n, size in enumerate(batches):
            mine = rows[n * count:(n + 1) * count]
            out[f"trace: store, batches of {size}"] = per_item_ms(
                lambda: [write(mine[k:k + size]) for k in range(0, len(mine), size)], len(mine))
        # a 20-match search's trace, and the same under the record's rules (labels of hidden items, ADR 0012)
        del records[:]
        searches = max(count // 10, 10)
        for _ in range(searches):
            call(app, environ("GET", "/fhir/Patient?_count=20"))
        from fhir_server.policy.trace_visibility import hiding_labels
        for label, hook in (("", None), (", with the record rules' labels", hiding_labels)):
            auditor.builder.item_labels = hook
            out[f"trace: build and index a 20-match search (request thread){label}"] = per_item_ms(
                lambda: [prepare(r) for r in records], len(records))
    return out


def store_alone(count: int) -> dict[str, float]:
    """One transaction writing one small resource with one token entry; and its COMMIT alone."""
    from fhir_server.search.extract import _Collector
    from fhir_server.store import open_store
    from fhir_server.store.base import StoredResource
    with tempfile.TemporaryDirectory() as directory:
        store = open_store(f"sqlite:///{directory}/store.sqlite3")

        def entries(i: int) -> Any:
            collector = _Collector()
            collector.token("code", "http://example.org", f"c{i}", None)
            return collector.entries()

        def put(i: int) -> None:
            stored = StoredResource("Basic", f"b{i}", 1, "2026-01-01T00:00:00Z", False,
                                    b'{"resourceType":"Basic","id":"b%d"}' % i, "POST")
            store.atomically(lambda tx: tx.put(stored, entries(i), expected_version=None))
        put(-1)
        out = {"store: one small resource, one transaction": per_item_ms(
            lambda: [put(i) for i in range(count)], count)}
        conn = store._conn()

        def commit_only(i: int) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (f"k{i}", b"v"))
            conn.execute("COMMIT")
        out["store: BEGIN, one key-value row, COMMIT (raw SQLite)"] = per_item_ms(
            lambda: [commit_only(i) for i in range(count)], count)
    return out


def markdown(rows: dict[str, list[float]], args: argparse.Namespace, command: str, machine: dict,
             load: tuple[str, str]) -> str:
    lines = [SECTION, "",
             f"Command: `{command}`", "",
             f"Machine: {machine['nproc']} cores ({machine['cpu']}), Python {machine['python']}, SQLite "
             f"{machine['sqlite']}; run {machine['date']} on commit {machine['commit']}; load average "
             f"{load[0]} → {load[1]}.", "",
             "CPU time of the calling thread, in one process, without server or client (bench/costs.py's "
             "docstring): what each part of a request costs, to know where an optimisation pays. Median "
             f"of {args.repeat} runs of {args.count} requests each.", "",
             "| part | CPU ms per request (median) | runs |", "|---|---:|---|"]
    for label, values in rows.items():
        lines.append(f"| {label} | {statistics.median(values):.3f} | "
                     + ", ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000, help="requests per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args(argv)
    command = " ".join([".venv/bin/python bench/costs.py", *(argv if argv is not None else sys.argv[1:])])
    machine, start_load = machine_facts(), loadavg()
    rows: dict[str, list[float]] = {}
    for run in range(args.repeat):
        for part in (create_and_read(args.count, args.seed + run),
                     traces(args.count, args.seed + run, (1, 5, 20, 100, 500)),
                     store_alone(args.count)):
            for label, value in part.items():
                rows.setdefault(label, []).append(value)
        print(f"run {run + 1}/{args.repeat} done", file=sys.stderr)
    text = markdown(rows, args, command, machine, (start_load, loadavg()))
    print(text)
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
