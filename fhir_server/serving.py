"""Serving the WSGI application in production: granian worker processes, each building its own app.

Why granian rather than gunicorn (docs/adr/0010-http-server.md): its HTTP/1.1 parsing, keep-alive
handling and thread pool are native code, so a worker's CPU goes to FHIR rather than to HTTP. On the
2-core benchmark machine a bare Flask endpoint answered 5,234 requests/s under granian against 2,722
under gunicorn's gthread worker; this server's untraced read by id reached 2,715 requests/s.
Request bodies are streamed to the application (a large ``$import`` upload is never held in memory).
"""
from __future__ import annotations

import atexit
import multiprocessing.util
import signal
from collections.abc import Callable
from dataclasses import dataclass

from fhir_server.settings import Settings


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2  # processes: one per core is what a CPU-bound Python server can use
    # WSGI threads per process: a request waiting on the write lock or the disk lets another run, and a read
    # finds a thread while a large Bundle runs in the process (services/lanes.py)
    threads: int = 4
    access_log: bool = False
    # seconds a worker has to finish its requests and write its traces once told to stop; then it is killed
    stop_timeout: int = 30


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopDuringLoad:
    """Keeps a stop signal that reaches a worker process while it is still building its app, and then ends the
    worker instead of letting it serve.

    granian installs a worker's own SIGINT/SIGTERM handlers only after the app loader returns; until then
    the worker runs the handler it inherited from the main process, which only flags the main's (forked)
    copy of the server. A stop sent then was lost and the worker served on while the main waited for it
    forever (seen as ``serve`` ignoring SIGTERM right after start on a loaded machine). Re-sending the
    signal once granian's handler is in place is not enough: granian wires that handler to the worker's
    shutdown a few statements later, and a stop landing in between is lost the same way (measured: about
    one start/stop in fifteen under load). So a worker told to stop while loading exits as soon as its
    app is built, through multiprocessing's normal exit (exit handlers run, status 0).
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def _record(self, signum: int, frame: object) -> None:
        self.received = signum

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._record)

    def exit_if_received(self) -> None:
        if self.received is not None:
            raise SystemExit(0)


def app_loader(settings: Settings, stop_requested: Callable[[], bool] = lambda: False) -> Callable[[], Callable]:
    """What each worker process runs after the fork: its own app, store connections and background threads.

    ``stop_requested`` reads, in the worker, the flag its inherited handler sets on the main's forked server
    object: a stop that arrived between the fork and the start of the load."""
    def load() -> Callable:
        stop = StopDuringLoad()
        stop.install()
        if stop_requested():
            stop.received = signal.SIGTERM
        from fhir_server.app import create_app, settle_heap
        app = create_app(settings, bulk_worker=True)
        # a worker process ends through multiprocessing, which skips the interpreter's exit handlers: run them
        # at the worker's own exit, so that queued traces are written and periodic tasks stop cleanly
        multiprocessing.util.Finalize(None, atexit._run_exitfuncs, exitpriority=0)
        settle_heap()  # in-process, the slowest 0.1 % of reads went from 41 to 18 ms
        stop.exit_if_received()
        return app
    return load


def run(settings: Settings, options: ServeOptions) -> None:
    """Serve until SIGINT or SIGTERM, which let each worker finish its requests and exit."""
    from granian import Granian
    from granian.constants import Interfaces
    server = Granian("fhir_server.app:create_app", address=options.host, port=options.port,
                     interface=Interfaces.WSGI, workers=options.workers, blocking_threads=options.threads,
                     log_access=options.access_log, websockets=False, respawn_failed_workers=True,
                     workers_kill_timeout=options.stop_timeout)
    server.serve(target_loader=app_loader(settings, lambda: bool(getattr(server, "interrupt_signal", False))),
                 wrap_loader=False)
