#!/usr/bin/env python3
"""Care history feed benchmark (issue #8): how many care items per second the insurer can feed.

For each mode, a fresh SQLite store and the real server (``fhir-server serve --insecure-no-auth``,
granian, ``--workers 2 --threads 4`` (serve's defaults), periodic purge off) on loopback:

1. the synthetic insurer's patients are imported first (``$import``, not timed);
2. ``--items`` care items (``fhir_server.carehistory.synthetic``, deterministic, a fifth of them
   older than the 24-month window, all stored) are fed through

   * **bulk**: one ``POST /fhir/$import`` of the NDJSON file (streamed upload), then the status URL
     polled every 0.5 s until the manifest (200): items/s = items / (kick-off to manifest);
   * **transaction**: transaction Bundles of ``--bundle`` conditional updates
     (``PUT ExplanationOfBenefit?identifier=...``), ``--clients`` client threads: items/s = items /
     (first request to last answer);

3. optionally **under read load** (``+reads``): ``--readers`` client threads read all along, each
   request either ``GET Patient/[id]`` or ``GET ExplanationOfBenefit?patient=[id]&_count=20`` of a
   random patient; their rate and latency are reported with the ingest rate;
4. a **re-feed** of the same file through ``$import`` (everything unchanged: no new version).

Every run checks what was stored (manifest counts, Bundle statuses). Usage:
    .venv/bin/python bench/insurer.py --items 20000 [--modes bulk,bulk+reads,transaction,transaction+reads,refeed]
                                      [--bundle 200] [--clients 2] [--readers 2] [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import FHIR_JSON, Server, loadavg, machine_facts, nearest_rank, write_section  # noqa: E402

SECTION = "## Care history feed (issue #8)"
OUT = ROOT / "bench" / "out"
NDJSON = "application/fhir+ndjson"
TARGET = 2000
ITEMS_PER_PATIENT = 41  # about, with the default 30 months (checked by the generator)


def dataset(items: int, seed: int) -> Path:
    """bench/out/insurer-<items>-<seed>/{Patient,ExplanationOfBenefit}.ndjson, generated once."""
    from fhir_server.carehistory.synthetic import SyntheticInsurer
    from fhir_server.model import jsonio

    folder = OUT / f"insurer-{items}-{seed}"
    done = folder / "done"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    insurer = SyntheticInsurer(items // 20 + 10, seed=seed)
    written = patients = 0
    with open(folder / "ExplanationOfBenefit.ndjson", "wb") as out:
        for i in range(insurer.patients):
            if written >= items:
                break
            patients += 1
            for item in insurer.care_items(i)[: items - written]:
                out.write(jsonio.dumps(item) + b"\n")
                written += 1
    with open(folder / "Patient.ndjson", "wb") as out:
        for i in range(patients):
            out.write(jsonio.dumps(insurer.patient(i)) + b"\n")
    done.write_text(json.dumps({"items": written, "patients": patients}))
    return folder


def run_import(base: str, path: Path, session) -> tuple[float, dict]:
    """Kick off an $import of ``path`` and wait for its manifest: (seconds, manifest)."""
    started = time.monotonic()
    with open(path, "rb") as body:
        response = session.post(f"{base}/$import", data=body, headers={"Content-Type": NDJSON,
                                                                          "Accept": FHIR_JSON})
    assert response.status_code == 202, response.text
    status = response.headers["Content-Location"]
    while True:
        poll = session.get(status, headers={"Accept": FHIR_JSON})
        if poll.status_code == 200:
            return time.monotonic() - started, poll.json()
        assert poll.status_code == 202, poll.text
        time.sleep(0.5)


def run_transactions(base: str, path: Path, size: int, clients: int) -> tuple[float, int]:
    """Send the items as transaction Bundles of ``size`` from ``clients`` threads: (seconds, items stored)."""
    import requests

    from fhir_server.carehistory.synthetic import SyntheticInsurer
    lines = path.read_bytes().splitlines()
    chunks = [lines[i:i + size] for i in range(0, len(lines), size)]
    bodies = [json.dumps(SyntheticInsurer.bundle([json.loads(line) for line in chunk], "transaction")).encode()
              for chunk in chunks]
    stored = [0] * clients
    errors: list[str] = []

    def client(k: int) -> None:
        session = requests.Session()
        for body in bodies[k::clients]:
            response = session.post(base, data=body, headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
            if response.status_code != 200:
                errors.append(response.text[:300])
                continue
            stored[k] += sum(e["response"]["status"].startswith(("200", "201")) for e in response.json()["entry"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    return elapsed, sum(stored)


class Readers:
    """``count`` threads reading a patient or a patient's care items until stopped; latencies in ms."""

    def __init__(self, base: str, patients: list[str], count: int):
        self.base, self.patients, self.count = base, patients, count
        self.latencies: list[float] = []
        self.failures = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._read, args=(k,)) for k in range(count)]

    def _read(self, k: int) -> None:
        import requests
        session = requests.Session()
        rng = random.Random(k)
        while not self.stopping.is_set():
            pid = rng.choice(self.patients)
            url = f"{self.base}/Patient/{pid}" if rng.random() < 0.5 else \
                f"{self.base}/ExplanationOfBenefit?patient={pid}&_count=20"
            started = time.perf_counter()
            response = session.get(url, headers={"Accept": FHIR_JSON})
            self.latencies.append((time.perf_counter() - started) * 1000)
            self.failures += response.status_code != 200

    def __enter__(self) -> "Readers":
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        self.elapsed = time.monotonic() - self.started

    def summary(self) -> dict:
        return {"reads": len(self.latencies), "reads_per_s": round(len(self.latencies) / self.elapsed, 1),
                "p50_ms": round(nearest_rank(self.latencies, 50), 1),
                "p99_ms": round(nearest_rank(self.latencies, 99), 1), "failures": self.failures}


def run_mode(mode: str, data: Path, args: argparse.Namespace, work: Path) -> dict:
    import requests
    store = work / f"{mode.replace('+', '-')}.sqlite3"
    server = Server(store, args.workers, args.threads, work / f"{mode.replace('+', '-')}.log")
    server.start()
    try:
        session = requests.Session()
        patient_seconds, manifest = run_import(server.base, data / "Patient.ndjson", session)
        assert not manifest["error"], manifest
        patients = [json.loads(line)["id"] for line in (data / "Patient.ndjson").read_bytes().splitlines()]
        items = json.loads((data / "done").read_text())["items"]
        load_before = loadavg()
        readers = Readers(server.base, patients, args.readers) if mode.endswith("+reads") else None
        if readers:
            readers.__enter__()
        try:
            if mode.startswith(("bulk", "refeed")):
                if mode == "refeed":
                    run_import(server.base, data / "ExplanationOfBenefit.ndjson", session)  # first feed, not timed
                seconds, manifest = run_import(server.base, data / "ExplanationOfBenefit.ndjson", session)
                stored = manifest["output"][0]["count"]
                assert not manifest["error"], manifest["error"]
            else:
                seconds, stored = run_transactions(server.base, data / "ExplanationOfBenefit.ndjson", args.bundle,
                                                   args.clients)
        finally:
            if readers:
                readers.__exit__(None, None, None)
        assert stored == items, (stored, items)
        result = {"mode": mode, "items": items, "seconds": round(seconds, 1),
                  "items_per_s": round(items / seconds, 1), "patients": len(patients),
                  "patient_import_s": round(patient_seconds, 1), "load_before": load_before, "load_after": loadavg()}
        if readers:
            result["reads"] = readers.summary()
        print(json.dumps(result), flush=True)
        return result
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--modes", default="bulk,bulk+reads,transaction,transaction+reads,refeed")
    parser.add_argument("--bundle", type=int, default=200, help="items per transaction Bundle")
    parser.add_argument("--clients", type=int, default=2, help="threads sending transaction Bundles")
    parser.add_argument("--readers", type=int, default=2, help="reading threads in the +reads modes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode (the median is reported)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="WSGI threads per worker process (serve's default)")
    parser.add_argument("--import-workers", type=int, default=None,
                        help="processes validating ahead of the $import writes (FHIR_SERVER_IMPORT_WORKERS of the "
                             "server; default: the server's, the number of CPUs; 0: in the job's thread)")
    parser.add_argument("--write", action="store_true",
                        help="replace the section of docs/benchmarks.md (it holds before/after figures: merge by hand)")
    args = parser.parse_args()
    if args.import_workers is not None:  # the server inherits this process's environment
        os.environ["FHIR_SERVER_IMPORT_WORKERS"] = str(args.import_workers)
    os.environ["FHIR_SERVER_PURGE_INTERVAL"] = "0"  # the periodic purge would remove the older fifth mid-run
    facts = machine_facts()
    data = dataset(args.items, args.seed)
    work = Path(tempfile.mkdtemp(prefix="insurer-bench-"))
    results: dict[str, list[dict]] = {}
    try:
        for _ in range(args.repeat):
            for mode in args.modes.split(","):
                results.setdefault(mode, []).append(run_mode(mode, data, args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.write:
        write_section(SECTION, render(results, args, facts))
    return 0


def render(results: dict[str, list[dict]], args: argparse.Namespace, facts: dict) -> str:
    command = " ".join(["bench/insurer.py", *sys.argv[1:]])
    rows = []
    for mode, runs in results.items():
        rate = statistics.median(r["items_per_s"] for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        reads = runs[len(runs) // 2].get("reads")
        read_text = (f"{reads['reads_per_s']} reads/s, p50 {reads['p50_ms']} ms, p99 {reads['p99_ms']} ms"
                     if reads else "–")
        loads = "; ".join(f"{r['load_before']} → {r['load_after']}" for r in runs)
        rows.append(f"| {mode} | {runs[0]['items']:,} | {seconds} | **{rate:,.0f}** | {read_text} | {loads} |")
    return "\n".join([
        SECTION, "",
        f"Command: `.venv/bin/python {command}` on {facts['nproc']} cores ({facts['cpu']}), {facts['ram_gib']} GiB, "
        f"Python {facts['python']}, SQLite {facts['sqlite']}, commit {facts['commit']}, {facts['date']}. Server: "
        f"`fhir-server serve --insecure-no-auth --workers {args.workers} --threads {args.threads}` on a fresh "
        "SQLite store per mode (synchronous=FULL), periodic purge off. Items: the synthetic insurer's "
        "(`fhir_server/carehistory/synthetic.py`, ~1.4 kB each, profiles checked on every write). Medians of "
        f"{args.repeat} run(s); load average (1, 5, 15 min) before → after each run, from `uptime`.", "",
        "| mode | items | seconds | items/s | reads during the feed | load average |",
        "|---|---|---|---|---|---|", *rows, ""])


if __name__ == "__main__":
    sys.exit(main())
