#!/usr/bin/env python3
"""Transaction Bundles and Patient/$everything against the served app (SQLite).

1. transaction: ``--transactions`` Bundles of 100 resources each (a generated patient's record:
   Patient, Encounters, Conditions, Observations, reports... cross-referenced by ``urn:uuid``
   full URLs, all POSTed), each sent as one ``POST /fhir``; p50/p95 per Bundle.
   Target (issue "bundles and operations"): p50 < 300 ms.
2. $everything: one patient whose record holds ``--everything-size`` resources (generated records
   re-pointed to that patient, loaded with a transaction per 100), then ``GET
   /fhir/Patient/{id}/$everything`` timed for the first page (``_count`` 50, the default) and for
   the whole walk of its ``next`` links (every resource, ``_count=1000``). Target: p50 < 200 ms.

Usage: .venv/bin/python bench/operations.py [--write]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as gen  # noqa: E402  (bench/generate.py)
from harness import FHIR_JSON, Server, loadavg, machine_facts, nearest_rank, write_section  # noqa: E402

SECTION = "## Transactions and $everything (issue: bundles and operations)"
TARGET_TRANSACTION_P50 = 300.0
TARGET_EVERYTHING_P50 = 200.0


def transaction(resources: list[dict]) -> dict:
    """A transaction Bundle POSTing ``resources``, their mutual references turned into urn:uuid."""
    urns = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid4()}" for r in resources}
    entries = []
    for resource in resources:
        body = copy.deepcopy(resource)
        rewrite(body, urns)
        urn = urns[f"{resource['resourceType']}/{resource['id']}"]
        del body["id"]
        entries.append({"fullUrl": urn, "resource": body,
                        "request": {"method": "POST", "url": resource["resourceType"]}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def rewrite(node, mapping: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and value in mapping:
                node[key] = mapping[value]
            else:
                rewrite(value, mapping)
    elif isinstance(node, list):
        for item in node:
            rewrite(item, mapping)


def records(patients: int, seed: int):
    """Each generated patient's record (Patient first), shared practitioners and organizations aside."""
    for index in range(patients):
        yield gen.patient_record(index, patients, seed)


def hundred(patients: int, seed: int):
    """Bundles of exactly 100 resources: a record cut or topped up with the next one's resources,
    the extra resources re-pointed to the Bundle's patient."""
    pending: list[dict] = []
    for record in records(patients, seed):
        if not pending:
            pending = list(record)
        else:
            pending += repoint(record[1:], record[0]["id"], pending[0]["id"])
        while len(pending) >= 100:
            yield pending[:100]
            pending = []


def repoint(resources: list[dict], old: str, new: str) -> list[dict]:
    out = []
    for resource in resources:
        body = copy.deepcopy(resource)
        rewrite(body, {f"Patient/{old}": f"Patient/{new}"})
        out.append(body)
    return out


def post(session, base: str, bundle: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = session.post(base, json=bundle, headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
                            timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"transaction answered {response.status_code}: {response.text[:500]}")
    return elapsed, response.json()


def walk(session, url: str) -> tuple[float, int]:
    started, count = time.perf_counter(), 0
    while url:
        response = session.get(url, headers={"Accept": FHIR_JSON}, timeout=120)
        if response.status_code != 200:
            raise RuntimeError(f"$everything answered {response.status_code}: {response.text[:500]}")
        page = response.json()
        count += len(page.get("entry", []))
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return (time.perf_counter() - started) * 1000, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=30)
    parser.add_argument("--everything-size", type=int, default=500)
    parser.add_argument("--everything-runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=gen.DEFAULT_SEED)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="replace this section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    import requests

    facts, load_before = machine_facts(), loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as work:
        server = Server(Path(work) / "fhir.sqlite3", args.workers, args.threads, Path(work) / "server.log")
        server.start()
        try:
            session = requests.Session()
            patients = args.transactions * 2 + args.everything_size // 50 + 10
            for shared in gen.shared_resources(patients, args.seed):  # the practitioners and organizations
                session.put(f"{server.base}/{shared['resourceType']}/{shared['id']}", json=shared,
                            headers={"Content-Type": FHIR_JSON}, timeout=60).raise_for_status()
            bundles = hundred(patients, args.seed)
            times = [post(session, server.base, transaction(next(bundles)))[0] for _ in range(args.transactions)]

            # one patient with --everything-size resources, loaded in 100-resource transactions
            owner = None
            loaded = 0
            while loaded < args.everything_size:
                chunk = next(bundles)
                if owner is None:
                    _, response = post(session, server.base, transaction(chunk))
                    owner = response["entry"][0]["response"]["location"].split("/")[1]
                else:
                    chunk = repoint(chunk[1:], chunk[0]["id"], owner)
                    bundle = transaction(chunk)
                    for entry in bundle["entry"]:
                        rewrite(entry["resource"], {f"Patient/{owner}": f"Patient/{owner}"})
                    post(session, server.base, bundle)
                loaded += len(chunk)
            url = f"{server.base}/Patient/{owner}/$everything"
            first, whole, counted = [], [], 0
            for _ in range(args.everything_runs):
                started = time.perf_counter()
                session.get(url, headers={"Accept": FHIR_JSON}, timeout=120).raise_for_status()
                first.append((time.perf_counter() - started) * 1000)
                elapsed, counted = walk(session, url + "?_count=1000")
                whole.append(elapsed)
        finally:
            server.stop()
    t50, t95 = statistics.median(times), nearest_rank(times, 95)
    f50, w50, w95 = statistics.median(first), statistics.median(whole), nearest_rank(whole, 95)
    command = "python bench/operations.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        SECTION, "",
        f"Command: `{command.strip()}` — {facts['date']}, commit {facts['commit']}; {facts['nproc']} cores "
        f"({facts['cpu']}), Python {facts['python']}, SQLite {facts['sqlite']}; granian {args.workers} workers x "
        f"{args.threads} threads; load average {load_before} before, {loadavg()} after (the client shares the "
        "machine).", "",
        "| measurement | p50 ms | p95 ms | target |",
        "|---|---|---|---|",
        f"| transaction of 100 resources with urn:uuid references ({len(times)} Bundles) | {t50:.0f} | {t95:.0f} "
        f"| p50 < {TARGET_TRANSACTION_P50:.0f} ms: {'met' if t50 < TARGET_TRANSACTION_P50 else 'missed'} |",
        f"| $everything, first page (_count 50), patient with {counted} resources | {f50:.0f} | "
        f"{nearest_rank(first, 95):.0f} | |",
        f"| $everything, every page (_count 1000), {counted} resources | {w50:.0f} | {w95:.0f} "
        f"| p50 < {TARGET_EVERYTHING_P50:.0f} ms: {'met' if w50 < TARGET_EVERYTHING_P50 else 'missed'} |",
        ""])
    print(text)
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
