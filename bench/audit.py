#!/usr/bin/env python3
"""Traceability overhead: read-by-id and search throughput with tracing on and off (docs/adr/0008).

Each round starts two servers one after the other (``fhir-server serve --insecure-no-auth`` under
granian, loopback, fresh SQLite store each), one with tracing on (the default) and one with
``FHIR_SERVER_AUDIT=0``, in alternating order (ABBA...) so that drift in the machine's load hits
both alike. For each: ``--resources`` validated POSTs (25 % Patients, then Observations, Conditions
and AllergyIntolerances referencing them: bench/crud.py's generator), then, after a warm-up,

1. read: GET [type]/[id] on random ids for ``--duration`` seconds;
2. search: GET Observation?subject=Patient/[id] on random patients (a few matches each) for
   ``--duration`` seconds;

over ``--clients`` keep-alive connections (bench/crud.py's load generator). With tracing on, the
number of AuditEvents stored at the end is checked against the requests sent (every request traced;
searches list each returned item). Reported: the median throughput and latency of the rounds per
mode, and the overhead (1 - on/off).

Usage: .venv/bin/python bench/audit.py [--write]   (--help for the options)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crud  # noqa: E402  (bench/crud.py: generator, load generator, server runner)
from harness import loadavg, machine_facts, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Traceability overhead"
FHIR_JSON = "application/fhir+json"


@dataclass
class Run:
    mode: str  # "on" | "off"
    read: crud.PhaseResult
    search: crud.PhaseResult
    create: crud.PhaseResult
    traces: int | None  # AuditEvents stored at the end (tracing on)
    requests: int  # requests sent to the server (all phases, warm-ups included)
    problems: list[str]


def get_json(port: int, path: str) -> dict:
    conn = crud.Connection(port)
    try:
        status, data = conn.send(crud.Request("GET", path, None, {"Accept": FHIR_JSON}))
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"GET {path} -> {status}: {data[:300]!r}")
    return json.loads(data)


def one_run(mode: str, number: int, args, workdir: Path) -> Run:
    rng = random.Random(args.seed + number)  # the same data and requests for both modes of a round
    os.environ["FHIR_SERVER_AUDIT"] = "1" if mode == "on" else "0"  # inherited by the server process
    server = crud.Server(workdir, args.workers, args.threads, args.synchronous)
    crud.wait_for_quiet(args.wait_idle)
    sent = 0
    try:
        server.start()
        print(f"round {number + 1}/{args.repeat}, tracing {mode}: server pid {server.proc.pid}", file=sys.stderr)
        patients = [crud.make_patient(rng) for _ in range(max(1, args.resources // 4))]
        first = crud.run_phase("create", server.port, server.pgid, args.clients, keep_responses=True,
                               jobs=[crud.json_request("POST", "/fhir/Patient", p) for p in patients])
        created = [json.loads(data) for _, _, data in first.responses]
        refs = [(p["id"], f"{p['name'][0]['family']} {p['name'][0]['given'][0]}") for p in created]
        if not refs:
            raise RuntimeError("no Patient could be created: " + "; ".join(first.failures))
        clinical = crud.clinical_bodies(rng, args.resources - len(patients), refs)
        second = crud.run_phase("create", server.port, server.pgid, args.clients, keep_responses=True,
                                jobs=[crud.json_request("POST", f"/fhir/{r['resourceType']}", r) for r in clinical])
        created += [json.loads(data) for _, _, data in second.responses]
        create = crud.merge("create", [first, second])
        create.responses = first.responses = second.responses = []
        sent += create.requests
        crud.check_alive(server, "create")

        paths = [f"/fhir/{r['resourceType']}/{r['id']}" for r in created]
        picker = random.Random(args.seed * 7 + number)

        def read_job() -> crud.Request:
            return crud.Request("GET", picker.choice(paths), None, {"Accept": FHIR_JSON}, "read")

        def search_job() -> crud.Request:
            pid = picker.choice(refs)[0]
            return crud.Request("GET", f"/fhir/Observation?subject=Patient/{pid}", None, {"Accept": FHIR_JSON},
                                "search")

        results = {}
        for name, job in (("read", read_job), ("search", search_job)):
            crud.wait_for_quiet(args.wait_idle)
            warm = crud.run_phase("warm-up", server.port, server.pgid, args.clients, make_job=job,
                                  duration=args.warmup)
            result = crud.run_phase(name, server.port, server.pgid, args.clients, make_job=job,
                                    duration=args.duration)
            sent += warm.requests + result.requests
            crud.check_alive(server, name)
            results[name] = result
            print(f"  {name}: {result.ok}/{result.requests} = {result.rps:.0f}/s, p50 {result.pct(50):.1f} ms, "
                  f"p99 {result.pct(99):.1f} ms, server CPU {cpu_ms(result):.2f} ms/request", file=sys.stderr)
        traces = None
        if mode == "on":  # every request traced? (the writers drain their queues within a moment)
            time.sleep(2.0)
            traces = get_json(server.port, "/fhir/AuditEvent?_summary=count")["total"]
            print(f"  traces stored: {traces} for {sent} requests", file=sys.stderr)
        return Run(mode, results["read"], results["search"], create, traces, sent, server.problems())
    except BaseException:
        if server.proc is not None:
            print("server log (tail):\n" + server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
        for leftover in ("fhir.sqlite3", "fhir.sqlite3-wal", "fhir.sqlite3-shm"):
            (workdir / leftover).unlink(missing_ok=True)


def cpu_ms(result: crud.PhaseResult) -> float:
    """Server CPU (all its processes, the trace writers included) per request answered, in ms."""
    return result.server_cpu / result.requests * 1000 if result.requests else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(runs: list[Run], mode: str, phase: str) -> dict:
    results = [getattr(r, phase) for r in runs if r.mode == mode]
    return {"rps": median([r.rps for r in results]), "p50": median([r.pct(50) for r in results]),
            "cpu": median([cpu_ms(r) for r in results]),
            "p99": median([r.pct(99) for r in results]), "all": [r.rps for r in results],
            "errors": sum(r.errors for r in results)}


def report(runs: list[Run], args, facts: dict, command: str, load_before: str, load_after: str) -> str:
    lines = [SECTION, "",
             f"Command: `{command}` (tracing on = the default; off = `FHIR_SERVER_AUDIT=0`).", "",
             f"Machine: {facts['nproc']} cores ({facts['cpu']}), {facts['ram_gib']} GiB RAM, Python "
             f"{facts['python']}, SQLite {facts['sqlite']}; {facts['date']}, commit {facts['commit']}. "
             f"Load average (`uptime`) before: {load_before}; after: {load_after} (the benchmark's own load "
             "included). The load generator runs on the same "
             f"cores as the server: {args.workers} granian workers x {args.threads} threads, "
             f"{args.clients} keep-alive connections, {args.resources} resources per store, "
             f"{args.duration:.0f} s per measurement after {args.warmup:.0f} s of warm-up, {args.repeat} rounds "
             "alternating the order of the two modes. Throughput and CPU per request count each measurement "
             "until the server is idle again after its last answer (the traces still queued then are written "
             "within the measurement, bench/crud.py's drain).", "",
             "| phase | tracing | throughput (median) | p50 | p99 | server CPU / request | rounds (req/s) |",
             "|---|---|---|---|---|---|---|"]
    overheads = {}
    for phase, label in (("read", "read by id"), ("search", "search Observation?subject= (≈3 matches)")):
        on, off = summary(runs, "on", phase), summary(runs, "off", phase)
        for mode, s in (("off", off), ("on", on)):
            lines.append(f"| {label} | {mode} | {s['rps']:.0f}/s | {s['p50']:.1f} ms | {s['p99']:.1f} ms | "
                         f"{s['cpu']:.2f} ms | "
                         + ", ".join(f"{v:.0f}" for v in s["all"]) + " |")
        overheads[phase] = 1 - on["rps"] / off["rps"] if off["rps"] else float("nan")
    lines.append("")
    lines.append("Overhead of tracing (1 - on/off, medians): "
                 + "; ".join(f"{p} {v:.1%}" for p, v in overheads.items()) + ".")
    stored = [(r.traces, r.requests) for r in runs if r.mode == "on"]
    if stored:
        lines.append("Traces stored with tracing on, per round (AuditEvents / requests sent, the count request "
                     "excluded): " + ", ".join(f"{t} / {n}" for t, n in stored) + ".")
    errors = sum(summary(runs, m, p)["errors"] for m in ("on", "off") for p in ("read", "search"))
    problems = sorted({p for r in runs for p in r.problems})
    lines.append(f"Non-2xx responses or transport errors during the measurements: {errors}."
                 + (" Server log problems: " + "; ".join(problems[:5]) if problems else ""))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--resources", type=int, default=4_000, help="resources created per store")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each: one server per mode)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--threads", type=int, default=4, help="WSGI threads per worker process (serve's default)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured requests before")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL",
                        help="SQLite synchronous mode (the server's default is FULL)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="before each phase, wait up to this many seconds for the machine to be quiet")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--tmpdir", help="where the temporary stores go (default: the system temp dir)")
    parser.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.resources < 4 or args.repeat < 1 or args.clients < 1:
        parser.error("--resources must be at least 4, --repeat and --clients at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/audit.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                             else sys.argv[1:]))
    facts = machine_facts()
    load_before = loadavg()
    runs: list[Run] = []
    saved = os.environ.get("FHIR_SERVER_AUDIT")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-audit-", dir=args.tmpdir) as tmp:
            for number in range(args.repeat):
                order = ("off", "on") if number % 2 == 0 else ("on", "off")
                for mode in order:
                    workdir = Path(tmp) / f"{number}-{mode}"
                    workdir.mkdir()
                    runs.append(one_run(mode, number, args, workdir))
    finally:
        if saved is None:
            os.environ.pop("FHIR_SERVER_AUDIT", None)
        else:
            os.environ["FHIR_SERVER_AUDIT"] = saved
    text = report(runs, args, facts, command.strip(), load_before, loadavg())
    print(text)
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
