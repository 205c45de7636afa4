"""The ``fhir-server`` command: ``serve``, ``load``, ``reindex``; ``clients``, ``users``, ``launch`` (auth/cli.py)."""
from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Iterator, Sequence

from fhir_server.settings import DEFAULT_STORE, Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-server", description="FHIR R4 server for the shared medical record")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the FHIR API with a production WSGI server (granian)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--store", help=f"sqlite:///PATH or mongodb://... (default $FHIR_SERVER_STORE or "
                                       f"{DEFAULT_STORE})")
    serve.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    serve.add_argument("--threads", type=int, default=4,
                       help="WSGI threads per worker (default 4: reads keep a thread while large Bundles run; "
                            "docs/benchmarks.md compares 2, 4 and 8)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every HTTP request to stdout (off by default: it costs ~0.2 ms per request)")
    serve.add_argument("--base-url", help="public base URL of the API, e.g. https://host/fhir")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="serve without authentication (development only; loopback hosts only)")
    serve.add_argument("--profile-mode", choices=("enforce", "warn"),
                       help="a write that misses its type's or its claimed profiles: enforce refuses it (422), warn "
                            "stores it and returns warnings (default $FHIR_SERVER_PROFILE_MODE or warn)")
    serve.add_argument("--otp-ttl", type=int, help="seconds a one-time login code stays valid (default 300)")
    serve.add_argument("--access-token-ttl", type=int, help="seconds an access token stays valid (default 3600)")
    serve.add_argument("--otp-outbox", metavar="DIR",
                       help="development: write one-time login codes as JSON files into DIR instead of sending them")

    load = sub.add_parser("load", help="import FHIR JSON files, Bundles and NDJSON through validation")
    load.add_argument("paths", nargs="+", type=Path)
    load.add_argument("--store")
    load.add_argument("--quiet", action="store_true", help="no progress line")
    load.add_argument("--chunk", type=int, default=500, help="resources per store transaction (default 500)")
    load.add_argument("--resume", action="store_true",
                      help="continue an interrupted load of the same files (progress kept in --state)")
    load.add_argument("--state", default="var/load-state.json", help="progress file for --resume")
    load.add_argument("--workers", type=int, default=None,
                      help="processes that validate and index ahead of the writes (default: the number of CPUs; "
                           "0: all in this process)")

    from fhir_server.validation.cli import add_parser as add_validate_parser
    add_validate_parser(sub)

    reindex = sub.add_parser("reindex", help="rebuild the search index of stored resources")
    reindex.add_argument("--store")
    reindex.add_argument("--type", action="append", dest="types", help="only these types (repeatable)")

    purge = sub.add_parser("purge", help="remove the care items older than the 24-month window (and trace it)")
    purge.add_argument("--store")

    demo = sub.add_parser("demo", help="write a synthetic insurer's reimbursement histories (NDJSON, Bundles)")
    demo.add_argument("--patients", type=int, default=100)
    demo.add_argument("--seed", type=int, default=8)
    demo.add_argument("--months", type=int, default=30, help="months of history (default 30: some beyond 24)")
    demo.add_argument("--bundle-size", type=int, default=0, help="also write batch Bundles of this many items")
    demo.add_argument("--out", type=Path, default=Path("var/demo"))

    jobs = sub.add_parser("record-jobs", help="run the record's timed rules now (items invisible to the patient, "
                          "closed records); serve runs them every hour")
    jobs.add_argument("--store")
    jobs.add_argument("--otp-outbox", help="write notifications to this directory (development)")

    from auth.cli import add_parsers as add_auth_parsers  # clients add, users add, launch
    add_auth_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from auth.cli import COMMANDS as AUTH_COMMANDS
    from fhir_server.validation.cli import run as validate
    return {"serve": serve, "load": load, "reindex": reindex, "validate": validate, "purge": purge, "demo": demo,
            "record-jobs": record_jobs,
            **AUTH_COMMANDS}[args.command](args)


def serve(args: argparse.Namespace) -> int:
    if args.insecure_no_auth and not is_loopback(args.host):
        print(f"refusing --insecure-no-auth on non-loopback host {args.host}: without authentication the "
              "record must only be reachable from this machine", file=sys.stderr)
        return 2
    settings = Settings.from_env(store_url=args.store, base_url=args.base_url,
                                 insecure_no_auth=True if args.insecure_no_auth else None,
                                 profile_mode=args.profile_mode,
                                 otp_ttl=args.otp_ttl, access_token_ttl=args.access_token_ttl,
                                 otp_outbox=args.otp_outbox)
    from fhir_server.app import create_app
    from fhir_server.serving import ServeOptions, run
    from fhir_server.services.publication import publish
    server = create_app(settings).extensions["fhir"]  # fail fast on a bad store URL, create the schema once
    published = publish(server.resources)  # the record's profiles, readable at /fhir/StructureDefinition
    server.store.close()
    print(f"{published} definitions from profiles/ published or updated", file=sys.stderr)
    print(f"serving FHIR R4 at http://{args.host}:{args.port}/fhir on {settings.store_url}"
          + (" WITHOUT AUTHENTICATION" if settings.insecure_no_auth else ""), file=sys.stderr)
    run(settings, ServeOptions(host=args.host, port=args.port, workers=args.workers, threads=args.threads,
                               access_log=args.access_log))
    return 0


def iter_resources(path: Path) -> Iterator[tuple[str, object]]:
    """(where, parsed resource or error) for every resource in a JSON file, Bundle or NDJSON file."""
    from fhir_server.model import jsonio
    for file in _input_files(path):
        if file.suffix == ".ndjson":
            with file.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        yield from _parsed(f"{file}:{number}", line, jsonio)
            continue
        for where, item in _parsed(str(file), file.read_bytes(), jsonio):
            if isinstance(item, dict) and item.get("resourceType") == "Bundle" and \
                    item.get("type") in ("transaction", "batch", "collection", "searchset"):
                yield from _bundle_resources(where, item)
            else:
                yield where, item


def _bundle_resources(where: str, bundle: dict) -> Iterator[tuple[str, object]]:
    """The entries' resources, with ``urn:uuid`` full URLs rewritten to the ids they will be stored under."""
    from fhir_server.model.ids import new_id
    from fhir_server.model.references import rewrite_references
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
    mapping = {}
    for entry in entries:
        resource = entry.get("resource")
        full_url = entry.get("fullUrl", "")
        if isinstance(resource, dict) and full_url.startswith("urn:uuid:"):
            resource.setdefault("id", new_id())
            mapping[full_url] = f"{resource.get('resourceType')}/{resource['id']}"
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        if resource is None:
            request = entry.get("request") or {}
            resource = ValueError(f"bundle entry without a resource ({request.get('method', '')} "
                                  f"{request.get('url', '')}); only resources are loaded".replace(" )", ")"))
        yield f"{where}#entry[{index}]", rewrite_references(resource, mapping)


def _parsed(where: str, data: bytes, jsonio) -> Iterator[tuple[str, object]]:
    try:
        yield where, jsonio.loads(data)
    except jsonio.JSONError as exc:
        yield where, exc


def load(args: argparse.Namespace) -> int:
    import os

    from fhir_server.access.gate import ANONYMOUS, OpenGate
    from fhir_server.app import create_app, settle_heap
    from fhir_server.services.loader import Loader, LoadState

    settings = Settings.from_env(store_url=args.store, insecure_no_auth=True)
    server = create_app(settings, gate=OpenGate()).extensions["fhir"]
    settle_heap()
    workers = (os.cpu_count() or 1) if args.workers is None else max(0, args.workers)
    inputs = sorted({f for path in args.paths for f in (_input_files(path))})
    state = LoadState(Path(args.state), inputs) if args.resume else None
    items = (item for path in inputs for item in iter_resources(path))

    def progress(report) -> None:
        if not args.quiet:
            print(f"\rloaded {report.loaded}  rejected {len(report.rejected)}  skipped {report.skipped}", end="",
                  file=sys.stderr, flush=True)

    loader = Loader(server.resources, ANONYMOUS, workers=workers,  # workers fork: they share the built Engine
                    worker_server=lambda: create_app(settings, gate=OpenGate(), engine=server.engine).extensions["fhir"])
    report = loader.load(items, chunk_size=args.chunk, state=state, progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    print(f"{report.loaded} resources loaded, {len(report.rejected)} rejected"
          + (f", {report.skipped} already loaded by an earlier run" if report.skipped else ""))
    for where, why in report.rejected:
        print(f"  rejected {where}: {why}")
    server.store.close()
    return 0 if not report.rejected else 1


def _input_files(path: Path) -> list[Path]:
    if not path.exists():
        raise SystemExit(f"fhir-server load: {path} does not exist")
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson"))
    return [path]


def reindex(args: argparse.Namespace) -> int:
    from fhir_server.app import create_app

    settings = Settings.from_env(store_url=args.store, insecure_no_auth=True)
    server = create_app(settings).extensions["fhir"]
    try:
        unknown = sorted(set(args.types or ()) - set(server.definitions.served))
        if unknown:
            print(f"fhir-server reindex: not served here: {', '.join(unknown)}", file=sys.stderr)
            return 2
        run_reindex(server, args.types)
    finally:
        server.store.close()
    return 0


def run_reindex(server, types: Sequence[str] | None = None, echo=print) -> dict[str, int]:
    """Rebuild the search index of every current resource of ``types`` (default: every served type).

    The stored custom SearchParameters are loaded first, so existing resources get indexed for
    them. Each resource is rewritten in its own short store transaction, and one changed by the
    server meanwhile (already indexed afresh) is skipped: safe to run while the server runs.
    Returns {type: resources reindexed}.
    """
    from fhir_server.model import jsonio

    server.search_parameters.refresh(force=True)
    custom = server.search_parameters.applied
    echo(f"{len(custom)} custom search parameter(s)" + (": " + ", ".join(
        f"{'/'.join(sp['base'])}:{sp['code']}" for sp in custom) if custom else ""))
    counts: dict[str, int] = {}
    for rtype in types or sorted(server.definitions.served):
        server.search_parameters.refresh()  # cheap; picks up parameters written during a long run
        counts[rtype] = server.store.reindex(rtype, lambda stored: server.indexer.index(jsonio.loads(stored.body)))
        echo(f"{rtype}: {counts[rtype]} reindexed")
    echo(f"{sum(counts.values())} resources reindexed")
    return counts


def purge(args: argparse.Namespace) -> int:
    """Remove the expired care items now (fhir_server.carehistory.purge); prints what went."""
    from fhir_server.access.gate import OpenGate
    from fhir_server.app import create_app
    from fhir_server.carehistory.purge import purge as run_purge

    server = create_app(Settings.from_env(store_url=args.store, insecure_no_auth=True), gate=OpenGate()
                        ).extensions["fhir"]
    try:
        report = run_purge(server)
    finally:
        server.store.close()
    print(f"{report.items} care items ({report.versions} versions) of {report.patients} patients with every service "
          f"date before {report.cutoff} removed" + (f"; AuditEvent/{report.audit_id}" if report.audit_id else ""))
    return 0


def demo(args: argparse.Namespace) -> int:
    """Write a synthetic insurer's histories: Patient.ndjson, ExplanationOfBenefit.ndjson, bundles/ (carehistory)."""
    from fhir_server.carehistory.synthetic import SyntheticInsurer

    counts = SyntheticInsurer(args.patients, seed=args.seed, months=args.months).write(args.out, args.bundle_size)
    print(f"{counts['patients']} patients, {counts['items']} care items"
          + (f", {counts['bundles']} batch Bundles" if counts["bundles"] else "") + f" written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def record_jobs(args: argparse.Namespace) -> int:
    """Run the record's timed rules once (fhir_server.policy.schedule); prints what changed."""
    from auth.senders import build_sender
    from fhir_server.access.gate import OpenGate
    from fhir_server.app import create_app
    from fhir_server.policy.notifications import Notifier
    from fhir_server.policy.relations import RecordPolicy, RelationFinder
    from fhir_server.policy.schedule import run_record_jobs

    settings = Settings.from_env(store_url=args.store, insecure_no_auth=True, otp_outbox=args.otp_outbox)
    server = create_app(settings, gate=OpenGate()).extensions["fhir"]
    try:
        report = run_record_jobs(server, Notifier(server, build_sender(settings)),
                                 RelationFinder(server, RecordPolicy(), settings.clock))
    finally:
        server.store.close()
    print(f"{len(report.notified)} patients told of items awaiting announcement, {len(report.lifted)} items made "
          f"visible to their patient, {report.traces_shown} traces of shown items made visible, "
          f"{len(report.deleted)} closed records deleted")
    return 0
