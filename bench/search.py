#!/usr/bin/env python3
"""Search at scale: load a realistic record set through the normal write path, then time a query mix.

Phases:

1. load (skipped with ``--store`` on an already loaded store): ``--patients`` records from
   ``bench/generate.py`` (about 100 resources per patient: 10,000 patients is about a million
   resources) written by :class:`fhir_server.services.loader.Loader` (what ``fhir-server load``
   runs: chunks of ``--chunk`` resources, one store transaction each, every resource validated
   and indexed, client ids with PUT semantics) into a fresh SQLite store; reports the rate and
   the elapsed time, with progress on stderr;
2. the store's size on disk (database file + WAL), rows per index table;
3. the served app (``fhir-server serve --insecure-no-auth`` under granian, on 127.0.0.1 and a
   free port; stopped at the end) and a fixed query mix over HTTP with one keep-alive client
   (``requests.Session``): each kind runs ``--queries-per-kind`` times with different realistic
   values (random patients of the data set, their identifiers, names, codes and dates), the
   whole mix shuffled, ``--repeat`` times. Per kind: hits, p50/p95 latency of each repeat and
   their median over the repeats. Requests carry ``Prefer: handling=strict`` so that a
   misspelt parameter fails instead of being ignored; any non-200 answer is reported.

The store is kept (default ``var/bench/search-<patients>p-s<seed>.sqlite3``, git-ignored) and a
later run can reuse it with ``--store PATH``: the load is the long part.

``--max-load-minutes`` caps the load: no new patient is started after that time, and the store
holds the first patients of the data set (the report says how many). Plans (``EXPLAIN QUERY
PLAN`` of the SQL the store runs, includes too) are added for the kinds that miss their target.

Usage:
    .venv/bin/python bench/search.py --patients 200 --repeat 1 --queries-per-kind 5   # smoke
    .venv/bin/python bench/search.py --write            # 10,000 patients (~1M resources); doc section
    .venv/bin/python bench/search.py --patients 10000 --max-load-minutes 25 --load-only   # load only
    .venv/bin/python bench/search.py --store var/bench/search-10000p-s1.sqlite3 --write   # queries only
    .venv/bin/python bench/search.py --from-results FILE --notes notes.md --write   # re-render the section
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shlex
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import generate as gen  # noqa: E402  (bench/generate.py, next to this file)
from harness import (DOC, FHIR_JSON, HOST, ROOT, Server, group_cpu_seconds, loadavg, machine_busy_seconds,  # noqa: E402,F401
                     children_cpu_seconds, machine_facts, nearest_rank, own_cpu_seconds,
                     write_section as write_doc_section)

SECTION = "## Search at scale (issue: search)"
REQUEST_TIMEOUT = 120.0
TARGET_SELECTIVE_P95 = 50.0  # ms, queries with at most 100 hits
TARGET_INCLUDE_P95 = 100.0  # ms, a 20-entry page with _include
TARGET_LOAD_RATE = 1000.0  # resources/s
SELECTIVE_HITS = 100
INS = gen.INS_NIR
COMMON_CODES = ["8867-4", "85354-9", "29463-7", "718-7", "2345-7"]  # the most frequent LOINC codes of the set


# -- phase 1: load ------------------------------------------------------------------------------------
def sidecar(store: Path) -> Path:
    return store.with_name(store.name + ".bench.json")


def remove_store(store: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(store) + suffix).unlink(missing_ok=True)
    sidecar(store).unlink(missing_ok=True)


def load(store: Path, patients: int, seed: int, chunk: int, max_minutes: float = 0.0, workers: int = 2) -> dict:
    """Load the data set through the Loader (validation, indexing, one transaction per chunk).

    With ``max_minutes``, no new patient is started once that time has passed: the store then
    holds the first patients of the data set (whole records, with the shared resources made for
    ``patients``), and the result says how many."""
    from fhir_server.access.gate import ANONYMOUS, OpenGate
    from fhir_server.app import create_app
    from fhir_server.services.loader import Loader
    from fhir_server.settings import Settings

    remove_store(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    expected = patients * gen.PER_PATIENT_ESTIMATE
    loadavg_start = loadavg()
    settings = Settings(store_url=f"sqlite:///{store}", insecure_no_auth=True)
    server = create_app(settings, gate=OpenGate()).extensions["fhir"]
    busy0, cpu0, children0 = machine_busy_seconds(), own_cpu_seconds(), children_cpu_seconds()
    segments: list[tuple[int, float]] = []  # (resources loaded, seconds since start) every ~100k
    state = {"last_print": 0.0, "next_segment": 100_000}
    started = time.perf_counter()

    def progress(report) -> None:
        now = time.perf_counter() - started
        if report.loaded >= state["next_segment"]:
            segments.append((report.loaded, now))
            state["next_segment"] += 100_000
        if now - state["last_print"] >= 5 or report.loaded >= expected:
            state["last_print"] = now
            rate = report.loaded / now if now else 0.0
            eta = max(0.0, expected - report.loaded) / rate if rate else 0.0
            print(f"\r  loaded {report.loaded:>9,} ({rate:,.0f}/s, {now / 60:5.1f} min, about "
                  f"{eta / 60:4.1f} min left; rejected {len(report.rejected)}; load average {loadavg()})  ",
                  end="", file=sys.stderr, flush=True)

    done = {"patients": 0}

    def items():
        yield from gen.loader_items(patients, seed, start=patients)  # the shared resources only
        for index in range(patients):
            if max_minutes and time.perf_counter() - started > max_minutes * 60:
                print(f"\n  the {max_minutes:g} min budget is spent: stopping after {index:,} patients",
                      file=sys.stderr)
                break
            for item in gen.patient_record(index, patients, seed):
                yield f"{item['resourceType']}/{item['id']}", item
            done["patients"] = index + 1

    # what `fhir-server load` runs: validation and indexing in `workers` forked processes, writes here
    loader = Loader(server.resources, ANONYMOUS, workers=workers,
                    worker_server=lambda: create_app(settings, gate=OpenGate(), engine=server.engine).extensions["fhir"])
    report = loader.load(items(), chunk_size=chunk, progress=progress)
    elapsed = time.perf_counter() - started
    print(file=sys.stderr)
    main_cpu = own_cpu_seconds() - cpu0
    worker_cpu = children_cpu_seconds() - children0  # the workers have exited (Pool closed): counted here
    cpu = main_cpu + worker_cpu
    busy = machine_busy_seconds() - busy0
    server.store.close()
    segment_rates = []
    previous = (0, 0.0)
    for loaded, at in segments:
        segment_rates.append((loaded, (loaded - previous[0]) / (at - previous[1])))
        previous = (loaded, at)
    result = {"patients": done["patients"], "generated_for": patients, "max_minutes": max_minutes,
              "seed": seed, "chunk": chunk, "loaded": report.loaded,
              "rejected": len(report.rejected), "rejected_examples": report.rejected[:5],
              "elapsed_s": round(elapsed, 1), "rate": round(report.loaded / elapsed, 1),
              "cpu_s": round(cpu, 1), "main_cpu_s": round(main_cpu, 1), "worker_cpu_s": round(worker_cpu, 1),
              "workers": workers, "other_cpu_s": round(max(0.0, busy - cpu), 1),
              "segment_rates": [(n, round(r)) for n, r in segment_rates],
              "loadavg_start": loadavg_start, "loadavg_end": loadavg(),
              "date": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    result["command"] = " ".join([".venv/bin/python bench/search.py", *map(shlex.quote, sys.argv[1:])])
    sidecar(store).write_text(json.dumps(result, indent=1))
    return result


# -- phase 2: the store ------------------------------------------------------------------------------
def store_facts(store: Path) -> dict:
    sizes = {suffix or "db": Path(str(store) + suffix).stat().st_size
             for suffix in ("", "-wal", "-shm") if Path(str(store) + suffix).exists()}
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("resources", "versions", "idx_token", "idx_string", "idx_date", "idx_reference",
                            "idx_quantity", "idx_composite", "idx_number", "idx_uri")}
        types = dict(conn.execute("SELECT type, count(*) FROM resources WHERE deleted=0 GROUP BY type"
                                  " ORDER BY 2 DESC").fetchall())
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        by_object: dict[str, int] = {}
        try:  # needs SQLITE_ENABLE_DBSTAT_VTAB; optional
            for name, pages in conn.execute("SELECT name, count(*) FROM dbstat GROUP BY name"):
                by_object[name] = pages * page_size
        except sqlite3.Error:
            pass
    finally:
        conn.close()
    return {"bytes": sizes, "total_bytes": sum(v for k, v in sizes.items() if k != "-shm"), "rows": counts,
            "types": types, "objects": by_object}


# -- phase 3: the server and the query mix -----------------------------------------------------------
@dataclass
class Kind:
    name: str
    description: str
    target: str  # "selective" (judged when hits <= 100), "include", or "" (reported only)
    queries: list[list[str]] = field(default_factory=list)  # per query: the URL(s) timed (paging: several)
    paged: bool = False  # a sort + paging walk: first page and next pages timed separately


def _years(resources: list[dict]) -> list[int]:
    return sorted({int(r["effectiveDateTime"][:4]) for r in resources if "effectiveDateTime" in r})


def build_mix(loaded: int, generated_for: int, seed: int, per_kind: int) -> list[Kind]:
    """The query mix: every kind ``per_kind`` times, with values taken from the records of random
    patients among the ``loaded`` first ones of a data set generated for ``generated_for``."""
    rng = random.Random(seed * 1_000_003 + 17)
    chosen = rng.sample(range(loaded), min(loaded, per_kind * 2))
    records = [gen.patient_record(i, generated_for, seed) for i in chosen]
    # patients with observations (most of them): for the subject-based kinds
    with_obs = [r for r in records if any(x["resourceType"] == "Observation" for x in r)]

    def pick(i: int) -> list[dict]:
        return with_obs[i % len(with_obs)]

    def q(path: str, params: list[tuple[str, str]]) -> str:
        return f"{path}?{urlencode(params)}"

    kinds = [
        Kind("token selective", "Patient?identifier=INS-NIR|value", "selective"),
        Kind("identity", "Patient?family=X&given=Y&birthdate=D", "selective"),
        Kind("string", "Patient?name=family", "selective"),
        Kind("token", "Observation?code=loinc|rarer test", "selective"),
        Kind("reference", "Observation?subject=Patient/x", "selective"),
        Kind("date range", "Observation?subject=Patient/x&date=geY&date=ltY+1", "selective"),
        Kind("chain", "Observation?subject:Patient.identifier=INS|v&code=loinc|c", "selective"),
        Kind("_include", "Observation?subject=Patient/x&_include=Observation:subject&_count=20", "include"),
        Kind("_include results", "DiagnosticReport?subject=Patient/x&_include=DiagnosticReport:result&_count=20",
             "include"),
        Kind("_revinclude", "Patient?_id=x&_revinclude=Observation:subject", ""),
        Kind("_sort + paging", "Observation?subject=Patient/x&_sort=-date&_count=20, then 3 next links", "",
             paged=True),
        Kind("_summary=count", "Observation?code=loinc|common&_summary=count", ""),
        Kind("broad", "Observation?code=loinc|common&_count=20 (first page, with total)", ""),
        Kind("broad, _total=none", "Observation?code=loinc|common&_count=20&_total=none", ""),
    ]
    by = {k.name: k for k in kinds}
    for i in range(per_kind):
        record = pick(i)
        patient = record[0]
        pid, nir = patient["id"], patient["identifier"][0]["value"]
        name = patient["name"][0]
        observations = [x for x in record if x["resourceType"] == "Observation"]
        obs_code = rng.choice(observations)["code"]["coding"][0]["code"]
        years = _years(observations)
        year = rng.choice(years)
        other = records[(i + per_kind) % len(records)][0]
        by["token selective"].queries.append([q("Patient", [("identifier", f"{INS}|{nir}")])])
        by["identity"].queries.append([q("Patient", [("family", name["family"]), ("given", name["given"][0]),
                                                     ("birthdate", patient["birthDate"])])])
        by["string"].queries.append([q("Patient", [("name", other["name"][0]["family"])])])
        rare = gen.RARE_TESTS[i % len(gen.RARE_TESTS)]
        by["token"].queries.append([q("Observation", [("code", f"{gen.LOINC}|{rare}")])])
        by["reference"].queries.append([q("Observation", [("subject", f"Patient/{pid}")])])
        by["date range"].queries.append([q("Observation", [("subject", f"Patient/{pid}"),
                                                           ("date", f"ge{year}-01-01"), ("date", f"lt{year + 1}-01-01")])])
        by["chain"].queries.append([q("Observation", [("subject:Patient.identifier", f"{INS}|{nir}"),
                                                      ("code", f"{gen.LOINC}|{obs_code}")])])
        by["_include"].queries.append([q("Observation", [("subject", f"Patient/{pid}"),
                                                         ("_include", "Observation:subject"), ("_count", "20")])])
        by["_include results"].queries.append([q("DiagnosticReport", [
            ("subject", f"Patient/{pid}"), ("_include", "DiagnosticReport:result"), ("_count", "20")])])
        by["_revinclude"].queries.append([q("Patient", [("_id", pid), ("_revinclude", "Observation:subject")])])
        by["_sort + paging"].queries.append([q("Observation", [("subject", f"Patient/{pid}"), ("_sort", "-date"),
                                                               ("_count", "20")])])
        common = COMMON_CODES[i % len(COMMON_CODES)]
        by["_summary=count"].queries.append([q("Observation", [("code", f"{gen.LOINC}|{common}"),
                                                               ("_summary", "count")])])
        by["broad"].queries.append([q("Observation", [("code", f"{gen.LOINC}|{common}"), ("_count", "20")])])
        by["broad, _total=none"].queries.append([q("Observation", [("code", f"{gen.LOINC}|{common}"),
                                                                   ("_count", "20"), ("_total", "none")])])
    return kinds


@dataclass
class Sample:
    kind: str
    step: str  # "" or "page 1" / "next"
    ms: float
    matches: int | None  # Bundle.total when given, else the match entries of the page
    page_matches: int
    included: int
    status: int
    url: str


def run_query(session, base: str, kind: Kind, urls: list[str]) -> list[Sample]:
    out = []
    url = f"{base}/{urls[0]}"
    pages = 4 if kind.paged else 1
    for number in range(pages):
        t0 = time.perf_counter()
        response = session.get(url, timeout=REQUEST_TIMEOUT)
        data = response.content
        ms = (time.perf_counter() - t0) * 1000
        step = "" if not kind.paged else ("page 1" if number == 0 else "next pages")
        if response.status_code != 200:
            out.append(Sample(kind.name, step, ms, None, 0, 0, response.status_code, url))
            break
        bundle = json.loads(data)
        entries = bundle.get("entry") or []
        page = sum(1 for e in entries if (e.get("search") or {}).get("mode", "match") == "match")
        included = sum(1 for e in entries if (e.get("search") or {}).get("mode") == "include")
        out.append(Sample(kind.name, step, ms, bundle.get("total", page if number == 0 else None), page, included,
                          200, url))
        nxt = next((link["url"] for link in bundle.get("link") or [] if link.get("relation") == "next"), None)
        if nxt is None:
            break
        url = nxt
    return out


def wait_for_quiet(max_wait: float, pgid: int, threshold: float = 0.5) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` cores; return what they used."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, mine0, t0 = machine_busy_seconds(), own_cpu_seconds() + group_cpu_seconds(pgid), time.monotonic()
        time.sleep(2.0)
        mine = own_cpu_seconds() + group_cpu_seconds(pgid) - mine0
        load = (machine_busy_seconds() - busy0 - mine) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load
        print(f"  waiting for the machine to be quieter: other processes use {load:.2f} cores", file=sys.stderr)


def run_mix(base: str, kinds: list[Kind], repeat: int, seed: int, pgid: int, wait_idle: float = 0.0) -> dict:
    import requests
    session = requests.Session()
    session.headers.update({"Accept": FHIR_JSON, "Prefer": "handling=strict"})
    jobs = [(kind, urls) for kind in kinds for urls in kind.queries]
    # warm-up: one query of each kind (connection, first-use code paths), not timed
    for kind in kinds:
        run_query(session, base, kind, kind.queries[0])
    rounds = []
    for number in range(repeat):
        order = jobs[:]
        random.Random(seed * 31 + number).shuffle(order)
        if wait_idle:
            wait_for_quiet(wait_idle, pgid)
        busy0, server0, own0, wall0 = machine_busy_seconds(), group_cpu_seconds(pgid), own_cpu_seconds(), \
            time.perf_counter()
        samples: list[Sample] = []
        for kind, urls in order:
            samples += run_query(session, base, kind, urls)
        wall = time.perf_counter() - wall0
        server_cpu, client_cpu = group_cpu_seconds(pgid) - server0, own_cpu_seconds() - own0
        other = max(0.0, machine_busy_seconds() - busy0 - server_cpu - client_cpu)
        rounds.append({"samples": samples, "wall_s": wall, "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
                       "other_cpu_s": other, "loadavg": loadavg()})
        print(f"  round {number + 1}/{repeat}: {len(samples)} requests in {wall:.1f} s; other processes used "
              f"{other / wall:.2f} cores; load average {loadavg()}", file=sys.stderr)
    session.close()
    return summarise(kinds, rounds)


def summarise(kinds: list[Kind], rounds: list[dict]) -> dict:
    rows = []
    for kind in kinds:
        steps = ["page 1", "next pages"] if kind.paged else [""]
        for step in steps:
            per_round = []
            hits, included, errors = [], [], []
            selective_p95, selective_n = [], []  # over the queries with at most SELECTIVE_HITS hits
            for rnd in rounds:
                mine = [s for s in rnd["samples"] if s.kind == kind.name and s.step == step]
                ok = [s for s in mine if s.status == 200]
                errors += [f"{s.status} {s.url}" for s in mine if s.status != 200]
                if ok:
                    per_round.append((nearest_rank([s.ms for s in ok], 50), nearest_rank([s.ms for s in ok], 95),
                                      max(s.ms for s in ok)))
                few = [s.ms for s in ok if s.matches is not None and s.matches <= SELECTIVE_HITS]
                if few:
                    selective_p95.append(nearest_rank(few, 95))
                    selective_n.append(len(few))
                hits += [s.matches for s in ok if s.matches is not None]
                included += [s.included for s in ok]
            name = kind.name + (f" ({step})" if step else "")
            row = {"kind": name, "description": kind.description, "target": kind.target,
                   "samples": sum(1 for r in rounds for s in r["samples"] if s.kind == kind.name and s.step == step),
                   "p50": statistics.median(p[0] for p in per_round) if per_round else None,
                   "p95": statistics.median(p[1] for p in per_round) if per_round else None,
                   "p95_rounds": [round(p[1], 1) for p in per_round],
                   "max": max(p[2] for p in per_round) if per_round else None,
                   "hits_median": statistics.median(hits) if hits else None, "hits_max": max(hits) if hits else None,
                   "hits_min": min(hits) if hits else None,
                   "included_median": statistics.median(included) if included else 0,
                   "selective_p95": statistics.median(selective_p95) if selective_p95 else None,
                   "selective_share": (sum(selective_n) / max(1, sum(1 for r in rounds for s in r["samples"]
                                                                     if s.kind == kind.name and s.step == step))),
                   "errors": len(errors), "error_examples": errors[:3],
                   "example": next((s.url for r in rounds for s in r["samples"]
                                    if s.kind == kind.name and s.step == step), "")}
            row["verdict"] = verdict(row)
            rows.append(row)
    return {"rows": rows, "rounds": [{k: v for k, v in r.items() if k != "samples"} for r in rounds]}


def verdict(row: dict) -> str:
    if row["errors"]:
        return "errors"
    if row["p95"] is None:
        return ""
    if row["target"] == "include":
        return "met" if row["p95"] < TARGET_INCLUDE_P95 else "MISSED"
    if row["target"] == "selective":
        if row["hits_max"] is not None and row["hits_max"] > SELECTIVE_HITS:
            if row["selective_p95"] is None:
                return "not selective (> 100 hits): " + ("under 50 ms anyway" if row["p95"] < TARGET_SELECTIVE_P95
                                                         else "over 50 ms")
            share = f"{row['selective_share']:.0%} of the queries have ≤ 100 hits"
            return ("met" if row["selective_p95"] < TARGET_SELECTIVE_P95 else "MISSED") + \
                f" (p95 of those {row['selective_p95']:.1f} ms; {share})"
        return "met" if row["p95"] < TARGET_SELECTIVE_P95 else "MISSED"
    return ""


# -- query plans ----------------------------------------------------------------------------------
def explain(store: Path, url: str) -> list[str]:
    """EXPLAIN QUERY PLAN of the SQL the store runs for a search URL: the page query, its count, and the
    query of each ``_include``/``_revinclude`` (built as ``SearchService`` builds it, from the page's ids)."""
    from fhir_server.app import Engine
    from fhir_server.search.parse import SearchParser
    from fhir_server.search.query import Clause, HasClause, Query, ReferenceValue, TokenValue
    from fhir_server.services.search import INCLUDE_LIMIT
    from fhir_server.store.sqlite_search import SQLCompiler
    engine = explain.engine = getattr(explain, "engine", None) or Engine.build()
    served = frozenset(engine.definitions.served)
    parser = SearchParser(engine.registry, served, "")
    parts = urlsplit(url)
    rtype = parts.path.rstrip("/").rsplit("/", 1)[-1]
    parsed = parser.parse((rtype,), parse_qsl(parts.query), strict=True)
    compiler = SQLCompiler()
    statements = []
    if parsed.query.sort:
        statements.append(("sorted rpks", *compiler.select_sorted_rpks(parsed.query)))
    else:
        statements.append(("page", *compiler.select_page(parsed.query, parsed.count + 1, None)))
    statements.append(("count", *compiler.count(parsed.query)))
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    out = []
    try:
        if parsed.includes:
            sql, args = compiler.select_page(parsed.query, parsed.count, None)
            page = [(row[1], row[2]) for row in conn.execute(sql, args)]
            for include in parsed.includes:
                if include.reverse:
                    values = tuple(ReferenceValue(t, i) for t, i in page)
                    query = Query(types=(include.source_type,),
                                  clauses=[Clause(include.param, "reference", None, values)])
                else:
                    ids = tuple(TokenValue(None, i, False) for t, i in page if t == include.source_type)
                    identity = Query(types=(include.source_type,), clauses=[Clause("_id", "token", None, ids)])
                    param = engine.registry.get(include.source_type, include.param)
                    targets = sorted((set(param.targets or served) & served) if include.target_type is None
                                     else {include.target_type})
                    query = Query(types=tuple(targets),
                                  clauses=[HasClause(include.source_type, include.param, identity)])
                label = f"{'_revinclude' if include.reverse else '_include'} {include.source_type}:{include.param}" \
                        f" (from the {len(page)} resources of the page)"
                statements.append((label, *compiler.select_page(query, INCLUDE_LIMIT + 1, None)))
        for label, sql, args in statements:
            out.append(f"-- {label}: {sql}")
            for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args):
                out.append(f"   {row[3]}")
    finally:
        conn.close()
    return out


def plans_for(rows: list[dict], store: Path) -> dict[str, list[str]]:
    """Plans of the kinds over their target, and of the others slower than 100 ms at p95."""
    plans = {}
    for row in rows:
        slow = row["verdict"].startswith("MISSED") or "over 50 ms" in row["verdict"] or (
            not row["target"] and row["p95"] is not None and row["p95"] > 100)
        url = row["example"].split("/fhir/", 1)[1] if "/fhir/" in row["example"] else row["example"]
        if slow and url and "_page=" not in url:
            plans[row["kind"]] = [f"-- {url}"] + explain(store, url)
    return plans


# -- report --------------------------------------------------------------------------------------------
def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def fmt_bytes(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def fmt_hits(row: dict) -> str:
    if row["hits_median"] is None:
        return "–"
    text = f"{row['hits_median']:,.0f}" if row["hits_min"] == row["hits_max"] else \
        f"{row['hits_median']:,.0f} ({row['hits_min']:,}–{row['hits_max']:,})"
    if row["included_median"]:
        text += f" + {row['included_median']:,.0f} incl."
    return text


def markdown(result: dict) -> str:
    m, ld, st, q = result["machine"], result["load"], result["store"], result["queries"]
    lines = [SECTION, ""]
    load_command = result["load"].get("command")
    if load_command and load_command != result["command"]:
        lines.append(f"Commands: load `{load_command}`, then queries `{result['command']}`")
    else:
        lines.append(f"Command: `{result['command']}`")
    lines.append("")
    lines.append(f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}, "
                 f"SQLite {m['sqlite']}, {m['platform']}; run {m['date']} on commit {m['commit']}. The client "
                 f"runs on the same machine as the server, and other work was running (load averages below).")
    lines.append("")
    resources = st["rows"]["resources"]
    planned = ld.get("generated_for", ld["patients"])
    scope = f"{ld['patients']:,} patients" if planned == ld["patients"] else \
        f"the first {ld['patients']:,} patients of a {planned:,}-patient data set (the load was capped at " \
        f"{ld['max_minutes']:g} min: see below)"
    lines.append(f"Data: `bench/generate.py`, {scope}, seed {ld['seed']}: "
                 f"{resources:,} resources (" + ", ".join(f"{t} {n:,}" for t, n in st["types"].items()) + ").")
    lines.append("")
    workers = ld.get("workers", 0)
    how = (f"validation and indexing in {workers} worker processes, writes in the main process"
           if workers else "validation, indexing and writes in one process")
    lines.append("### Load (Loader, the `fhir-server load` path: " + how + ", chunks of "
                 f"{ld['chunk']} in one transaction, SQLite synchronous=FULL)")
    lines.append("")
    load_verdict = "met" if ld["rate"] >= TARGET_LOAD_RATE else "MISSED"
    split = (f" (main {ld['main_cpu_s'] / ld['elapsed_s']:.2f}, workers {ld['worker_cpu_s'] / ld['elapsed_s']:.2f})"
             if "worker_cpu_s" in ld else "")
    lines.append("| resources | rejected | elapsed | rate | target | per loader CPU-second | loader CPU | "
                 "other processes | load average start → end |")
    lines.append("|---:|---:|---:|---:|---|---:|---:|---:|---|")
    lines.append(f"| {ld['loaded']:,} | {ld['rejected']} | {ld['elapsed_s'] / 60:.1f} min | **{ld['rate']:,.0f}/s** "
                 f"| ≥ 1,000/s: {load_verdict} | {ld['loaded'] / max(ld['cpu_s'], 0.1):,.0f}/s | "
                 f"{ld['cpu_s'] / ld['elapsed_s']:.2f} cores{split} | "
                 f"{ld['other_cpu_s'] / ld['elapsed_s']:.2f} cores | {ld['loadavg_start']} → {ld['loadavg_end']} |")
    if ld.get("segment_rates"):
        lines.append("")
        lines.append("Rate per 100,000 resources as the store grows: " + ", ".join(
            f"{n // 1000:,}k: {r:,}/s" for n, r in ld["segment_rates"]) + ".")
    lines.append("")
    lines.append("### Store")
    lines.append("")
    size = st["total_bytes"]
    lines.append(f"{fmt_bytes(size)} on disk (database {fmt_bytes(st['bytes'].get('db', 0))} + WAL "
                 f"{fmt_bytes(st['bytes'].get('-wal', 0))}), {size / max(1, resources):,.0f} bytes per resource. "
                 "Index rows: " + ", ".join(f"{t.replace('idx_', '')} {n:,}" for t, n in st["rows"].items()
                                            if t.startswith("idx_") and n) +
                 f" ({sum(n for t, n in st['rows'].items() if t.startswith('idx_')) / max(1, resources):.1f} "
                 "per resource).")
    if st.get("objects"):
        top = sorted(st["objects"].items(), key=lambda kv: -kv[1])[:8]
        lines.append("Largest tables and indexes: " + ", ".join(f"`{n}` {fmt_bytes(b)}" for n, b in top) + ".")
    lines.append("")
    lines.append(f"### Queries ({q['per_kind']} queries per kind with different values, mix shuffled, "
                 f"{q['repeat']} rounds; one keep-alive client; server `--workers {q['workers']} --threads "
                 f"{q['threads']}`)")
    lines.append("")
    lines.append("Latency is the client's wall time for the whole HTTP exchange (parse, SQL, JSON, network); "
                 "p50/p95 are the median over the rounds of each round's percentile. Hits: the Bundle total "
                 "(median, range), plus included resources.")
    lines.append("")
    lines.append("| kind | query | hits | p50 ms | p95 ms | p95 per round | target | verdict |")
    lines.append("|---|---|---|---:|---:|---|---|---|")
    for row in q["rows"]:
        target = {"selective": "p95 < 50 ms if ≤ 100 hits", "include": "p95 < 100 ms"}.get(row["target"], "–")
        query = row["description"].replace("|", "\\|")  # a pipe would split the table cell, even in code
        lines.append(f"| {row['kind']} | `{query}` | {fmt_hits(row)} | {fmt_ms(row['p50'])} | "
                     f"**{fmt_ms(row['p95'])}** | {', '.join(map(str, row['p95_rounds']))} | {target} | "
                     f"{row['verdict'] or '–'} |")
    lines.append("")
    rounds = q["rounds"]
    lines.append("During the rounds: " + "; ".join(
        f"{r['wall_s']:.0f} s, server {r['server_cpu_s'] / r['wall_s']:.2f} cores, other processes "
        f"{r['other_cpu_s'] / r['wall_s']:.2f} cores, load average {r['loadavg']}" for r in rounds) + ".")
    errors = [row for row in q["rows"] if row["errors"]]
    if errors:
        lines.append("")
        lines.append("Errors: " + "; ".join(f"{r['kind']}: {r['errors']} ({', '.join(r['error_examples'])})"
                                             for r in errors))
    if result.get("plans"):
        lines.append("")
        lines.append("<details><summary>Query plans of the kinds over their target or slower than 100 ms at p95 "
                     "(<code>EXPLAIN QUERY PLAN</code> on the loaded store, SQL from <code>SQLCompiler</code>, for one "
                     "example query of each kind)</summary>")
        for kind, plan in result["plans"].items():
            lines.append("")
            lines.append(f"{kind}:")
            lines.append("")
            lines.append("```")
            lines.extend(plan)
            lines.append("```")
        lines.append("")
        lines.append("</details>")
    if result.get("notes"):
        lines.append("")
        lines.extend(result["notes"])
    lines.append("")
    return "\n".join(lines)


def write_section(text: str) -> None:
    write_doc_section(SECTION, text)


# -- main ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=10_000, help="patients to generate (~100 resources each)")
    parser.add_argument("--seed", type=int, default=gen.DEFAULT_SEED)
    parser.add_argument("--store", type=Path, help="SQLite store: reused when already loaded by this benchmark "
                                                  "(its patients and seed are taken from it), else loaded")
    parser.add_argument("--chunk", type=int, default=500, help="resources per load transaction (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the query mix (default 3)")
    parser.add_argument("--queries-per-kind", type=int, default=40, help="different queries per kind (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument("--max-load-minutes", type=float, default=0.0,
                        help="start no new patient after this many minutes of loading (0: no limit); the "
                             "store then holds the first patients of the data set")
    parser.add_argument("--wait-idle", type=float, default=120.0,
                        help="before each round, wait up to this many seconds for other processes to use less "
                             "than half a core (default 120; 0: do not wait)")
    parser.add_argument("--load-only", action="store_true", help="stop after loading")
    parser.add_argument("--load-workers", type=int, default=2,
                        help="loader worker processes that validate and index (default 2, as `fhir-server load` on "
                             "2 CPUs; 0: all in one process)")
    parser.add_argument("--write", action="store_true", help=f"replace the section of {DOC.relative_to(ROOT)}")
    parser.add_argument("--notes", type=Path, help="a markdown file whose text is added under the results "
                                                  "(findings, analysis)")
    parser.add_argument("--from-results", type=Path, help="no run: render (and with --write, write) the "
                                                         "section from a results file kept by an earlier run")
    args = parser.parse_args(argv)
    if args.from_results:
        result = json.loads(args.from_results.read_text())
        if args.notes:
            result["notes"] = args.notes.read_text().rstrip("\n").splitlines()
        store = args.store or Path(result.get("store_path", ""))
        if store and store.is_file():  # plans again, with this version of explain()
            result["plans"] = plans_for(result["queries"]["rows"], store.resolve())
        text = markdown(result)
        print(text)
        if args.write:
            write_section(text)
            print(f"wrote the section '{SECTION}' of {DOC}", file=sys.stderr)
        return 0

    command = " ".join([".venv/bin/python bench/search.py", *map(shlex.quote, argv or sys.argv[1:])])
    machine = machine_facts()
    print(f"machine: {machine}", file=sys.stderr)
    store = args.store or ROOT / "var" / "bench" / f"search-{args.patients}p-s{args.seed}.sqlite3"
    store = store.resolve()
    meta = sidecar(store)
    if args.store and store.exists() and meta.exists():
        load_result = json.loads(meta.read_text())
        args.patients, args.seed = load_result.get("generated_for", load_result["patients"]), load_result["seed"]
        print(f"reusing {store}: {load_result['loaded']:,} resources, the first {load_result['patients']:,} "
              f"patients of a {args.patients:,}-patient data set (seed {args.seed}), loaded at "
              f"{load_result['rate']:,.0f}/s on {load_result['date']}", file=sys.stderr)
    else:
        if args.store and store.exists():
            raise SystemExit(f"{store} exists but was not loaded by this benchmark (no {meta.name}); "
                             "give another path or remove it")
        print(f"loading {args.patients:,} patients (about {args.patients * gen.PER_PATIENT_ESTIMATE:,} resources) "
              f"into {store}; load average {loadavg()}", file=sys.stderr)
        load_result = load(store, args.patients, args.seed, args.chunk, args.max_load_minutes, args.load_workers)
        print(f"loaded {load_result['loaded']:,} resources in {load_result['elapsed_s']:.0f} s: "
              f"{load_result['rate']:,.0f}/s ({load_result['rejected']} rejected)", file=sys.stderr)
        if load_result["rejected"]:
            print(f"  rejected, e.g.: {load_result['rejected_examples']}", file=sys.stderr)
    if args.load_only:
        return 0
    facts = store_facts(store)
    print(f"store: {fmt_bytes(facts['total_bytes'])}, {facts['rows']['resources']:,} resources", file=sys.stderr)

    kinds = build_mix(load_result["patients"], args.patients, args.seed, args.queries_per_kind)
    log = store.with_name(store.name + ".server.log")
    server = Server(store, args.workers, args.threads, log)
    print(f"starting the server on {HOST}:{server.port} (log {log})", file=sys.stderr)
    try:
        server.start()
        queries = run_mix(server.base, kinds, args.repeat, args.seed, server.proc.pid, args.wait_idle)
    finally:
        server.stop()
    queries.update(per_kind=args.queries_per_kind, repeat=args.repeat, workers=args.workers, threads=args.threads)
    plans = plans_for(queries["rows"], store)
    result = {"command": command, "store_path": str(store), "machine": machine, "load": load_result, "store": facts,
              "queries": queries,
              "plans": plans, "notes": args.notes.read_text().rstrip("\n").splitlines() if args.notes else []}
    out = store.with_name(store.name + f".results-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.write_text(json.dumps(result, indent=1, default=str))
    text = markdown(result)
    print(text)
    print(f"(results kept in {out})", file=sys.stderr)
    if args.write:
        write_section(text)
        print(f"wrote the section '{SECTION}' of {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
