#!/usr/bin/env python3
"""Care item import on a LARGE store (issue #8): where the writer's time goes once the store is big.

An import's rate falls as the store grows (1,550 items/s on an empty store, ~1,000 on one of 800,000 items,
before session 7). Measuring that through a million-item `bench/insurer.py` run takes 15 minutes per variant;
this script builds the large store once and then times only the next ``--items`` on a fresh copy of it.

1. once: ``bench/out/import-scale-<base>/base.sqlite3`` holds the synthetic insurer's patients and its first
   ``--base`` care items (imported in-process like below, not timed);
2. per run: the store file is copied, flushed to disk, and the next ``--items`` items are imported by the
   job's own :class:`~fhir_server.bulk.imports.Importer` (2 worker processes, no HTTP); printed: items/s, the
   CPU per item of the writing process and of the workers, and the writer's wall and CPU in its transactions.

Variants (flags) change one thing each, some of them experiments that are no option for the server
(``--no-validation``, ``--synchronous OFF``). Usage:
    .venv/bin/python bench/import_scale.py --base 800000 --items 40000 [--random-ids] [--checkpoint-pages N]
                                           [--chunk N] [--synchronous FULL|NORMAL|OFF] [--no-validation]
"""
from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import loadavg, machine_facts  # noqa: E402
from insurer import OUT, dataset  # noqa: E402


class Progress:
    def page_done(self, progress: str) -> None:
        pass


def importer_for(store_path: Path, chunk: int):
    from fhir_server.app import create_app
    from fhir_server.bulk.imports import Importer
    from fhir_server.settings import Settings
    app = create_app(Settings(store_url=f"sqlite:///{store_path}", insecure_no_auth=True, audit=True),
                     bulk_worker=False)
    server = app.extensions["fhir"]
    return server, Importer(server, workers=2, parallel_from=0, chunk=chunk)


def run_import(importer, path: Path, out: Path) -> dict:
    from fhir_server.access.gate import ANONYMOUS
    from fhir_server.bulk.export import principal_to_dict
    from fhir_server.bulk.jobs import Job
    job = Job(uuid.uuid4().hex, "import", "bench", {"inputs": [{"url": str(path), "path": str(path),
                                                               "upload": False, "type": None}]},
              principal_to_dict(ANONYMOUS), "bench")
    out.mkdir(parents=True, exist_ok=True)
    return importer.run(job, out, Progress())["inputs"][0]


def larger_dataset(items: int, seed: int) -> Path | None:
    """A synthetic insurer dataset already generated with at least ``items`` items (the generator writes the
    same lines in the same order whatever the size, so its first lines are the smaller dataset's)."""
    found = []
    for folder in OUT.glob(f"insurer-*-{seed}"):
        size = folder.name.split("-")[1]
        if size.isdigit() and int(size) >= items and (folder / "done").exists():
            found.append((int(size), folder))
    return min(found)[1] if found else None


def base_store(base: int, items: int, seed: int) -> tuple[Path, Path]:
    """(the large store, the NDJSON of the items that follow), built once."""
    data = larger_dataset(base + items, seed) or dataset(base + items, seed)
    folder = OUT / f"import-scale-{base}-{seed}"
    store = folder / "base.sqlite3"
    following = folder / f"next-{items}.ndjson"
    folder.mkdir(parents=True, exist_ok=True)
    if not following.exists():
        with open(data / "ExplanationOfBenefit.ndjson", "rb") as source, open(following, "wb") as out:
            out.writelines(itertools.islice(source, base, base + items))
    if not (folder / "done").exists():
        first = folder / "first.ndjson"
        with open(data / "ExplanationOfBenefit.ndjson", "rb") as source, open(first, "wb") as out:
            out.writelines(itertools.islice(source, base))
        print(f"building {store} ({base:,} items, once; ~1,000 items/s)", flush=True)
        _, importer = importer_for(store, 200)
        run_import(importer, data / "Patient.ndjson", folder / "out")
        counts = run_import(importer, first, folder / "out")
        first.unlink()
        (folder / "done").write_text(str(counts))
    return store, following


@contextmanager
def variant(args: argparse.Namespace):
    """Apply the run's variant to the modules (before the workers fork, so they see it too)."""
    from fhir_server.services import resources
    from fhir_server.store.sqlite import SQLiteStore
    saved = (resources.new_id, SQLiteStore.BULK_CHECKPOINT_PAGES, SQLiteStore.bulk_writes)
    if args.random_ids:
        resources.new_id = lambda: str(uuid.uuid4())
    if args.checkpoint_pages is not None:
        SQLiteStore.BULK_CHECKPOINT_PAGES = args.checkpoint_pages
    if args.synchronous:
        original = SQLiteStore.bulk_writes

        @contextmanager
        def bulk_writes(store):
            with original(store):
                store._conn().execute(f"PRAGMA synchronous={args.synchronous}")
                try:
                    yield
                finally:
                    store._conn().execute("PRAGMA synchronous=FULL")
        SQLiteStore.bulk_writes = bulk_writes
    try:
        yield
    finally:
        resources.new_id, SQLiteStore.BULK_CHECKPOINT_PAGES, SQLiteStore.bulk_writes = saved


def timed_transactions(store_class, totals: dict):
    """Wrap the SQLite store's commit path to sum its wall and thread CPU time."""
    original = store_class._commit_batch

    def commit_batch(self, batch):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(self, batch)
        finally:
            totals["wall"] += time.perf_counter() - wall
            totals["cpu"] += time.thread_time() - cpu
    store_class._commit_batch = commit_batch
    return original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=800_000, help="care items already in the store")
    parser.add_argument("--items", type=int, default=40_000, help="care items imported and timed")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=200, help="lines per transaction (the server's: 200)")
    parser.add_argument("--random-ids", action="store_true", help="random UUIDs (version 4) as before ADR 0011")
    parser.add_argument("--checkpoint-pages", type=int, default=None,
                        help="WAL auto-checkpoint during the import (the server's: 10,000)")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL", "OFF"], default=None,
                        help="experiment: the import connection's synchronous setting (the server's: FULL)")
    parser.add_argument("--no-validation", action="store_true", help="experiment: no validation at all")
    args = parser.parse_args()

    from fhir_server.store.sqlite import SQLiteStore
    store, following = base_store(args.base, args.items, args.seed)
    work = store.with_name("run.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(store, work)
    os.sync()  # the copy's dirty pages are not the import's to write
    time.sleep(3)
    totals = {"wall": 0.0, "cpu": 0.0}
    original = timed_transactions(SQLiteStore, totals)
    load_before = loadavg()
    try:
        with variant(args):
            server, importer = importer_for(work, args.chunk)
            if args.no_validation:
                server.resources.validate = lambda resource, rtype, rid: []
            started, cpu = time.perf_counter(), time.process_time()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            counts = run_import(importer, following, work.parent / "out")
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        SQLiteStore._commit_batch = original
    workers = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    n = args.items
    facts = machine_facts()
    flags = " ".join(a for a in sys.argv[1:]) or "(defaults)"
    print(f"{facts['date']} commit {facts['commit']}, {facts['nproc']} cores {facts['cpu']}, load {load_before} -> "
          f"{loadavg()}")
    print(f"{flags}: {counts['created']:,} created, {counts['refused']} refused; {n / seconds:,.0f} items/s; "
          f"writer {cpu / n * 1e3:.3f} ms CPU/item, workers {workers / n * 1e3:.3f} ms CPU/item; in transactions "
          f"{totals['wall'] / n * 1e3:.3f} ms wall, {totals['cpu'] / n * 1e3:.3f} ms CPU per item")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
