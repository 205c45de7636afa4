#!/usr/bin/env python3
"""Bulk $export benchmark: a system-level export of N stored resources into NDJSON files.

1. load: ``--resources`` resources written straight through the store (no HTTP, no
   validation): each one stamped like the resource service does, indexed by the Engine's
   indexer (in ``--processes`` pool processes) and put in transactions of ``--batch``
   (SQLite ``synchronous=OFF`` while loading).
   One patient in ten; per patient 6 Observations (LOINC vital signs and labs with values),
   2 Conditions and 1 Encounter, all referencing the patient. The database is kept in
   ``bench/out/`` and reused by later runs with the same ``--resources`` and ``--seed``.
2. export, ``--repeat`` times, each in a fresh Python process (so memory figures are the
   export's own): build the app on the database, kick off ``GET /fhir/$export`` through the
   Flask test client, run the bulk worker synchronously until the job completes, check the
   manifest's counts equal the stored counts, and report the wall time, resources/s, bytes
   written, RSS before the export and peak RSS during it (sampled every 10 ms from
   /proc/self/statm, plus ``ru_maxrss``), and with ``--tracemalloc`` the peak of Python
   allocations during the export (slower; a separate run).

Figures are the median of the runs. Usage:
    .venv/bin/python bench/export.py --resources 200000,1000000 --repeat 3 --tracemalloc [--write]
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import itertools
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Bulk $export (issue: bundles and operations)"
OUT = ROOT / "bench" / "out"
TARGET_RPS = 20_000

LOINC = [("8867-4", "Heart rate", "/min", 50, 110, 0, "vital-signs"),
         ("8480-6", "Systolic blood pressure", "mm[Hg]", 95, 170, 0, "vital-signs"),
         ("8310-5", "Body temperature", "Cel", 36.0, 39.5, 1, "vital-signs"),
         ("29463-7", "Body weight", "kg", 40, 120, 1, "vital-signs"),
         ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 60, 200, 0, "laboratory"),
         ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 9.0, 17.5, 1, "laboratory"),
         ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.8, 2, "laboratory")]
SNOMED = [("38341003", "Hypertensive disorder"), ("44054006", "Diabetes mellitus type 2"),
          ("195967001", "Asthma"), ("35489007", "Depressive disorder"), ("13645005", "COPD")]
FAMILY = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau"]
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
GIVEN = ["Marie", "Jean", "Camille", "Louis", "Léa", "Hugo", "Chloé", "Théo", "Inès", "Lucas"]


# -- data -----------------------------------------------------------------------------------------
def _when(rng: random.Random) -> str:
    start = dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc)
    return (start + dt.timedelta(seconds=rng.randrange(10 * 365 * 86400))).isoformat().replace("+00:00", "Z")


def generate(n: int, seed: int):
    """(type, resource) pairs: per patient 6 observations, 2 conditions, 1 encounter."""
    rng = random.Random(seed)
    made = 0
    while made < n:
        pid = str(uuid.UUID(int=rng.getrandbits(128)))
        ref = {"reference": f"Patient/{pid}"}
        yield "Patient", {"resourceType": "Patient", "id": pid, "active": True,
                          "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8",
                                          "value": str(rng.randrange(10**12))}],
                          "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
                          "gender": rng.choice(["female", "male"]),
                          "birthDate": f"{rng.randrange(1930, 2020)}-{rng.randrange(1, 13):02d}"
                                       f"-{rng.randrange(1, 29):02d}",
                          "address": [{"city": "Lyon", "postalCode": "69003", "country": "FR"}]}
        made += 1
        encounter = str(uuid.UUID(int=rng.getrandbits(128)))
        for kind in ["Observation"] * 6 + ["Condition"] * 2 + ["Encounter"]:
            if made >= n:
                return
            rid = encounter if kind == "Encounter" else str(uuid.UUID(int=rng.getrandbits(128)))
            if kind == "Observation":
                code, display, unit, low, high, decimals, category = rng.choice(LOINC)
                value = round(rng.uniform(low, high), decimals) if decimals else rng.randrange(int(low), int(high))
                body = {"resourceType": "Observation", "id": rid, "status": "final",
                        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}],
                        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}],
                                 "text": display},
                        "subject": ref, "encounter": {"reference": f"Encounter/{encounter}"},
                        "effectiveDateTime": _when(rng),
                        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                          "code": unit}}
            elif kind == "Condition":
                code, display = rng.choice(SNOMED)
                body = {"resourceType": "Condition", "id": rid,
                        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                       "condition-clinical", "code": "active"}]},
                        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
                        "subject": ref, "onsetDateTime": _when(rng)}
            else:
                start = _when(rng)
                body = {"resourceType": "Encounter", "id": rid, "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "subject": ref, "period": {"start": start, "end": start}}
            yield kind, body
            made += 1


CHUNK = 10_000  # resources generated and indexed per task (whole patients: a multiple of 10)
_engine = None


def _prepare(task: tuple[int, int, int]) -> list:
    """One chunk of resources, stamped, serialised and indexed (runs in a pool process)."""
    global _engine
    from fhir_server.app import Engine
    from fhir_server.model import jsonio
    from fhir_server.services.resources import utc_now
    if _engine is None:
        _engine = Engine.build()
    count, seed, number = task
    out = []
    for rtype, body in generate(count, seed * 1_000_003 + number):
        now = utc_now()
        body = {"resourceType": rtype, "id": body["id"], "meta": {"versionId": "1", "lastUpdated": now}, **body}
        out.append((rtype, body["id"], now, jsonio.dumps(body), _engine.indexer.index(body)))
    return out


def load(path: Path, n: int, seed: int, batch: int, processes: int) -> float:
    """Generate and index in ``processes`` pool processes; this one writes batches of ``batch``."""
    import multiprocessing

    from fhir_server.store.base import StoredResource
    from fhir_server.store.sqlite import SQLiteStore

    store = SQLiteStore(path, synchronous="OFF")
    store._conn().execute("PRAGMA cache_size=-1048576")  # 1 GiB while loading: fewer B-tree page reloads
    started = time.perf_counter()
    tasks = iter([(min(CHUNK, n - start), seed, number) for number, start in enumerate(range(0, n, CHUNK))])
    done = 0
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        # at most 2 chunks per process in flight, so prepared data never piles up in this process
        in_flight = collections.deque(pool.apply_async(_prepare, (t,)) for t in itertools.islice(tasks, 2 * processes))
        while in_flight:
            chunk = in_flight.popleft().get()
            task = next(tasks, None)
            if task is not None:
                in_flight.append(pool.apply_async(_prepare, (task,)))
            for start in range(0, len(chunk), batch):
                with store.transaction() as tx:
                    for rtype, rid, now, body, index in chunk[start:start + batch]:
                        tx.put(StoredResource(rtype, rid, 1, now, False, body, "POST"), index, expected_version=None)
            done += len(chunk)
            if done % 50_000 < CHUNK:
                print(f"  loaded {done:,} ({done / (time.perf_counter() - started):,.0f}/s)", file=sys.stderr)
    store._conn().execute("CREATE TABLE IF NOT EXISTS bench_meta (k TEXT PRIMARY KEY, v TEXT)")
    store._conn().execute("INSERT OR REPLACE INTO bench_meta VALUES ('loaded', ?)", (json.dumps([n, seed]),))
    store._conn().execute("INSERT OR REPLACE INTO bench_meta VALUES ('load_seconds', ?)",
                          (str(time.perf_counter() - started),))
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return time.perf_counter() - started


def load_seconds_of(path: Path) -> float | None:
    """How long the load of an existing database took (recorded by :func:`load`)."""
    import sqlite3
    try:
        conn = sqlite3.connect(path)
        row = conn.execute("SELECT v FROM bench_meta WHERE k='load_seconds'").fetchone()
        conn.close()
        return float(row[0]) if row else None
    except sqlite3.Error:
        return None


def loaded(path: Path, n: int, seed: int) -> bool:
    import sqlite3
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(path)
        row = conn.execute("SELECT v FROM bench_meta WHERE k='loaded'").fetchone()
        conn.close()
        return row is not None and json.loads(row[0]) == [n, seed]
    except sqlite3.Error:
        return False


# -- one export (child process) -------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def export_once(path: Path, directory: Path, page_size: int, trace: bool) -> dict:
    from fhir_server.access.gate import OpenGate
    from fhir_server.app import create_app
    from fhir_server.bulk import BulkExports, BulkSettings
    from fhir_server.http.bulk_api import bulk_api
    from fhir_server.search.query import Query
    from fhir_server.settings import Settings
    from fhir_server.store.sqlite import SQLiteStore

    store = SQLiteStore(path)
    app = create_app(Settings(insecure_no_auth=True), store=store, gate=OpenGate())
    server = app.extensions["fhir"]
    server.bulk = BulkExports(server, BulkSettings(directory=str(directory), page_size=page_size))
    if "bulk_api" not in app.blueprints:
        app.register_blueprint(bulk_api, url_prefix="/fhir")
    client = app.test_client()
    stored = {t: store.count(Query(types=(t,))) for t in server.definitions.served}
    baseline = rss_bytes()
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    if trace:
        import tracemalloc
        tracemalloc.start()
    sampler.start()
    started = time.perf_counter()
    kick = client.get("/fhir/$export", headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
    assert kick.status_code == 202, kick.get_data(as_text=True)
    server.bulk.worker.run_pending()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    traced = None
    if trace:
        import tracemalloc
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    status = client.get(kick.headers["Content-Location"].replace("http://localhost", ""))
    assert status.status_code == 200, status.get_data(as_text=True)
    manifest = status.get_json()
    counts: dict[str, int] = {}
    for item in manifest["output"]:
        counts[item["type"]] = counts.get(item["type"], 0) + item["count"]
    assert counts == {t: n for t, n in stored.items() if n}, (counts, stored)
    written = sum(f.stat().st_size for f in directory.rglob("*.ndjson"))
    total = sum(counts.values())
    return {"resources": total, "seconds": elapsed, "rps": total / elapsed, "bytes": written,
            "files": len(manifest["output"]), "rss_before": baseline, "rss_peak": peak[0],
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "traced_peak": traced}


KINDS = [("Patient level", "/fhir/Patient/$export"),
         ("Group level, {members:,} members", "/fhir/Group/{group}/$export"),
         ("_typeFilter Observation?category=laboratory",
          "/fhir/$export?_type=Observation&_typeFilter=Observation%3Fcategory%3Dlaboratory"),
         ("two ORed _typeFilter (laboratory, or heart rate)",
          "/fhir/$export?_type=Observation&_typeFilter=Observation%3Fcategory%3Dlaboratory,"
          "Observation%3Fcode%3D8867-4")]


def kinds_once(path: Path, directory: Path, page_size: int) -> list[dict]:
    """One export of each of :data:`KINDS` (a temporary Group of the first 1,000 patients)."""
    from fhir_server.access.gate import ANONYMOUS, OpenGate
    from fhir_server.app import create_app
    from fhir_server.bulk import BulkExports, BulkSettings
    from fhir_server.http.bulk_api import bulk_api
    from fhir_server.settings import Settings
    from fhir_server.store.sqlite import SQLiteStore

    store = SQLiteStore(path)
    app = create_app(Settings(insecure_no_auth=True), store=store, gate=OpenGate())
    server = app.extensions["fhir"]
    server.bulk = BulkExports(server, BulkSettings(directory=str(directory), page_size=page_size))
    if "bulk_api" not in app.blueprints:
        app.register_blueprint(bulk_api, url_prefix="/fhir")
    client = app.test_client()
    members = [r[0] for r in store._conn().execute(
        "SELECT id FROM resources WHERE type='Patient' AND deleted=0 ORDER BY rpk LIMIT 1000")]
    group = server.resources.create(ANONYMOUS, "Group", {
        "resourceType": "Group", "type": "person", "actual": True,
        "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members]}).resource.id
    results = []
    try:
        for label, url in KINDS:
            started = time.perf_counter()
            kick = client.get(url.format(group=group), headers={"Prefer": "respond-async"})
            assert kick.status_code == 202, kick.get_data(as_text=True)
            server.bulk.worker.run_pending()
            elapsed = time.perf_counter() - started
            manifest = client.get(kick.headers["Content-Location"].replace("http://localhost", "")).get_json()
            total = sum(o["count"] for o in manifest["output"])
            results.append({"kind": label.format(members=len(members)), "resources": total, "seconds": elapsed,
                            "rps": total / elapsed})
    finally:
        server.resources.delete(ANONYMOUS, "Group", group)
    return results


def run_child(path: Path, page_size: int, trace: bool, kinds: bool = False):
    directory = Path(tempfile.mkdtemp(prefix="bulk-", dir=OUT))
    try:
        out = subprocess.run([sys.executable, __file__, "--child", str(path), "--child-dir", str(directory),
                              "--page-size", str(page_size)] + (["--tracemalloc"] if trace else [])
                             + (["--kinds"] if kinds else []),
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"export run failed:\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- report ---------------------------------------------------------------------------------------
def machine_facts() -> dict[str, str]:
    import sqlite3
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), "unknown")
    kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
    fs = "?"
    best = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if str(OUT).startswith(mount) and len(mount) > len(best):
            best, fs = mount, fstype
    return {"cpu": f"{model}, {os.cpu_count()} logical CPUs", "memory": f"{kb / 1024 / 1024:.1f} GiB RAM",
            "os": platform.platform(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "filesystem": f"{fs} ({best})", "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def cached_fraction(path: Path) -> float | None:
    """How much of the database file is in the OS page cache (``fincore``), None when unknown."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=False)
    try:
        return int(out.stdout.split()[0]) / path.stat().st_size
    except (IndexError, ValueError, ZeroDivisionError):
        return None


def mb(n: float) -> str:
    return f"{n / 1024 / 1024:,.0f} MB"


def _run_text(run: dict) -> str:
    cached = run.get("cached")
    return f"{run['rps']:,.0f}" + (f" ({cached:.0%})" if cached is not None else "")


def report(args, results: list[dict], kinds: dict | None = None) -> str:
    """``results``: per size {n, runs, traced, load_seconds, db_bytes}; ``kinds``: {n, runs} of :data:`KINDS`."""
    facts = machine_facts()
    command = (f".venv/bin/python bench/export.py --resources {args.resources} --repeat {args.repeat}"
               + (" --tracemalloc" if args.tracemalloc else "") + (" --kinds" if args.kinds else "")
               + (" --write" if args.write else ""))
    lines = [
        SECTION, "",
        f"Command: `{command}` ({dt.date.today().isoformat()}).", "",
        f"Machine: {facts['cpu']}, {facts['memory']}; {facts['os']}; Python {facts['python']}, "
        f"SQLite {facts['sqlite']}; files on {facts['filesystem']}. Other jobs shared the machine (load average "
        f"{facts['load']} at the end).", "",
        "Data: one SQLite file per size, loaded directly through the store (stamped, indexed by the Engine's "
        "indexer, transactions of 1000; no HTTP, no validation): 10 % Patients, 60 % Observations, 20 % Conditions, "
        "10 % Encounters, all referencing their patient. "
        + "; ".join(f"{r['n']:,}: {mb(r['db_bytes'])}" + (f", loaded in {r['load_seconds']:,.0f} s" if r["load_seconds"]
                                                         else "") + (" by an earlier run" if r["reused"] else "")
                    for r in results)
        + f" (load: generation and indexing in {args.processes} processes, writes in one).", "",
        f"Timed: a system-level `GET /fhir/$export` kick-off, then the bulk worker run synchronously until the job "
        f"completes: pages of {args.page_size} through `Store.search` (keyset), the stored bytes written as NDJSON "
        "lines, lease/progress written once a second, one file per type (100 MB limit). Each run is a fresh "
        "process; the manifest counts are checked against the store's counts. Peak RSS is sampled every 10 ms "
        "during the export.", "",
        "| resources | resources/s (median) | runs (database file in the page cache before the run) | wall time "
        "| NDJSON written | RSS before | peak RSS during the export | peak Python allocations (tracemalloc run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        runs = r["runs"]
        med = {k: statistics.median(x[k] for x in runs) for k in ("seconds", "rps", "rss_before", "rss_peak",
                                                                  "bytes")}
        traced = r["traced"]
        lines.append(
            f"| {r['n']:,} | **{med['rps']:,.0f}** | {', '.join(_run_text(x) for x in runs)} | "
            f"{med['seconds']:.1f} s | {mb(med['bytes'])} in {runs[0]['files']} files | {mb(med['rss_before'])} | "
            f"{mb(med['rss_peak'])} ({', '.join(mb(x['rss_peak']) for x in runs)}) | "
            + (f"{mb(traced['traced_peak'])}" if traced else "not measured") + " |")
    if kinds:
        lines += ["", f"Other kinds of export, same code path, {kinds['n']:,} resources, one run each (a Patient-level "
                  "export parses every resource of the compartment types to check its patient links; a Group export "
                  "queries 50 members at a time; several `_typeFilter` queries of a type cost one more query per "
                  "page to skip what an earlier one matched):", "",
                  "| export | resources written | time | resources/s |", "|---|---|---|---|"]
        lines += [f"| {k['kind']} | {k['resources']:,} | {k['seconds']:.1f} s | {k['rps']:,.0f} |"
                  for k in kinds["runs"]]
    worst = min(statistics.median(x["rps"] for x in r["runs"]) for r in results)
    verdict = "every size meets it" if worst >= TARGET_RPS else "NOT met at every size"
    lines += [
        "", f"Target ≥ {TARGET_RPS:,} resources/s: {verdict} (slowest median {worst:,.0f}/s).", "",
        "Run-to-run variance is large on this shared VM: the export reads the whole database file, which the OS "
        "does not keep fully cached (the runs column), and other jobs compete for the 2 CPUs. The slow runs are "
        "spent in SQLite's row fetching (profiled: about half the time in `fetchall`, a fifth in the exporter's "
        "own code). A first run after the `resources_type_rpk` index was added builds it before its timed part "
        "(that process's higher RSS).", "",
        "Memory does not grow with the data: the exporter holds one page of resources and one 1 MB write buffer. "
        "The RSS growth during the export is SQLite's page cache of the reading connection (the store sets "
        "`cache_size=-65536`, at most 64 MiB per connection), which is why the peak is the same at every size; "
        "Python's own allocations peak at a few MB (tracemalloc).", ""]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace this section of docs/benchmarks.md (up to the next ``## `` heading), keeping the others."""
    lines = DOC.read_text(encoding="utf-8").splitlines(keepends=True) if DOC.exists() else \
        ["# Benchmarks\n", "\n"]
    start = next((i for i, line in enumerate(lines) if line.startswith("## Bulk $export")), None)
    if start is None:
        if lines and lines[-1].strip():
            lines.append("\n")
        lines.append(text)
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [text + ("\n" if end < len(lines) else "")]
    DOC.write_text("".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--resources", default="1000000", help="resources to export; several sizes: 200000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000, help="resources per load transaction")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="indexing processes for the load")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--tracemalloc", action="store_true", help="one more run measuring Python allocations")
    parser.add_argument("--kinds", action="store_true",
                        help="also time Patient-level, Group-level and _typeFilter exports (smallest size, once)")
    parser.add_argument("--write", action="store_true", help=f"replace this section of {DOC.relative_to(ROOT)}")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import logging
        logging.disable(logging.INFO)
        if args.kinds:
            print(json.dumps(kinds_once(args.child, args.child_dir, args.page_size)))
        else:
            print(json.dumps(export_once(args.child, args.child_dir, args.page_size, args.tracemalloc)))
        return 0

    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for n in (int(x) for x in str(args.resources).split(",")):
        path = OUT / f"export-{n}-{args.seed}.sqlite3"
        load_seconds, reused = load_seconds_of(path), True
        if not loaded(path, n, args.seed):
            reused = False
            for stale in OUT.glob(path.name + "*"):
                stale.unlink()
            print(f"loading {n:,} resources into {path} ...", file=sys.stderr)
            load_seconds = load(path, n, args.seed, args.batch, args.processes)
            print(f"  loaded in {load_seconds:,.0f} s", file=sys.stderr)
        runs = []
        for number in range(args.repeat):
            cached = cached_fraction(path)
            run = run_child(path, args.page_size, False)
            run["cached"] = cached
            print(f"{n:,} run {number + 1}: {run['resources']:,} resources in {run['seconds']:.1f} s = "
                  f"{run['rps']:,.0f}/s, RSS {mb(run['rss_before'])} -> peak {mb(run['rss_peak'])}", file=sys.stderr)
            runs.append(run)
        traced = run_child(path, args.page_size, True) if args.tracemalloc else None
        if traced:
            print(f"{n:,} tracemalloc run: peak {mb(traced['traced_peak'])} of Python allocations", file=sys.stderr)
        results.append({"n": n, "runs": runs, "traced": traced, "load_seconds": load_seconds, "reused": reused,
                        "db_bytes": path.stat().st_size})
    kinds = None
    if args.kinds:
        smallest = min(results, key=lambda r: r["n"])
        kinds = {"n": smallest["n"], "runs": run_child(OUT / f"export-{smallest['n']}-{args.seed}.sqlite3",
                                                      args.page_size, False, kinds=True)}
        for k in kinds["runs"]:
            print(f"{kinds['n']:,} {k['kind']}: {k['resources']:,} in {k['seconds']:.1f} s = {k['rps']:,.0f}/s",
                  file=sys.stderr)
    text = report(args, results, kinds)
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
