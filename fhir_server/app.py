"""The application factory: builds every service once and wires them together explicitly."""
from __future__ import annotations

import atexit
import gc
import logging
from datetime import timezone
from dataclasses import dataclass, field
from typing import Callable

from flask import Flask

from fhir_server.access.gate import AccessGate, OpenGate
from fhir_server.bulk import BulkExports, worker_enabled
from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.http.rendering import Renderer
from fhir_server.search.extract import Indexer
from fhir_server.search.parameters import SearchParameterRegistry
from fhir_server.search.parse import SearchParser
from fhir_server.search.query import AnyOf, Clause, ReferenceValue
from fhir_server.services.bundles import BundleService
from fhir_server.services.operations import OperationService
from fhir_server.services.resources import ResourceService
from fhir_server.services.search import SearchService
from fhir_server.services.search_parameters import SearchParameterService
from fhir_server.settings import Settings
from fhir_server.store import Store, open_store
from fhir_server.store.base import StoredResource
from fhir_server.validation.enforcement import ProfileEnforcer
from fhir_server.validation.profiles import ProfileRegistry
from fhir_server.validation.structure import StructureValidator
from fhir_server.validation.validator import Validator


log = logging.getLogger(__name__)


@dataclass
class Engine:
    """What is compiled from the FHIR definitions at start-up: costly once, then shared and read-only."""

    definitions: Definitions
    validator: StructureValidator
    registry: SearchParameterRegistry
    indexer: Indexer
    renderer: Renderer
    profiles: Validator | None = None  # base R4 and profile validation (profiles/); also ``validator``

    @classmethod
    def build(cls, definitions: Definitions | None = None) -> "Engine":
        definitions = definitions or Definitions()
        from fhir_server.carehistory.parameters import profile_search_parameters
        registry = SearchParameterRegistry(definitions, profile_search_parameters())  # R4 + profiles/SearchParameter-*
        validator = Validator(ProfileRegistry(definitions))
        return cls(definitions, validator, registry, Indexer(registry), Renderer(definitions), validator)


@dataclass
class FHIRServer:
    """Everything a request handler may use; one per application (``app.extensions["fhir"]``).

    ``engine`` becomes this server's own copy, whose search parameter registry and indexer hold the
    store's custom SearchParameters (:mod:`fhir_server.services.search_parameters`): the engine
    passed in, possibly shared with other servers, is never changed.
    """

    settings: Settings
    engine: Engine
    store: Store
    gate: AccessGate
    parser: SearchParser = field(init=False)
    resources: ResourceService = field(init=False)
    search: SearchService = field(init=False)
    operations: OperationService = field(init=False)
    bundles: BundleService = field(init=False)
    search_parameters: SearchParameterService = field(init=False)
    bulk: BulkExports = field(init=False)
    write_listeners: list[Callable[[StoredResource], None]] = field(init=False)

    def __post_init__(self) -> None:
        # called after each committed write, in order (ResourceService.on_write): the custom search
        # parameters first, then whatever features subscribe with add_write_listener()
        self.write_listeners = []
        self.search_parameters = SearchParameterService(self.engine, self.store)
        self.engine = engine = self.search_parameters.engine
        served = frozenset(engine.definitions.served)
        self.parser = SearchParser(engine.registry, served, self.settings.base_url or "")
        self.gate.attach(self)  # the SMART gate parses granular scopes and reads the compartment definitions
        profiles = (ProfileEnforcer(engine.profiles, engine.definitions, self.settings.profile_mode)
                    if engine.profiles is not None else None)
        self.resources = ResourceService(engine.definitions, self.store, engine.validator, engine.indexer,
                                         self.parser, self.gate, on_write=self._written,
                                         profiles=profiles, clock=self._instant_now)
        self.search = SearchService(self.store, self.parser, engine.indexer, self.gate, served)
        self.operations = OperationService(engine.definitions, self.store, self.resources, self.search,
                                           engine.validator, engine.indexer, self.gate)
        self.bundles = BundleService(self.resources, self.search, self.parser, engine.definitions, engine.renderer)
        self.bulk = BulkExports(self)  # job store in the store's database, exporter, worker (not started)
        self._capability: tuple[int, dict] | None = None  # (registry version, statement)
        self._capability_json: dict[str, tuple[int, bytes]] = {}  # base URL -> (registry version, encoded)
        self.write_listeners.append(self.search_parameters.on_write)
        self.search_parameters.load()
        from fhir_server.carehistory.feed import PatientReferenceCheck
        from fhir_server.carehistory.window import CareHistoryWindow
        from fhir_server.bulk.imports import BulkImports
        # the care history (issue #8): its 24-month window holds every principal; a care item needs a known patient
        self.care_window = CareHistoryWindow(self.parser, self.settings.clock)
        self.gate.add_standing_rule(self.care_window)  # a rule that also speaks for queries over several types
        self.resources.validator = PatientReferenceCheck(self.resources.validator, self.store)
        self.imports = BulkImports(self)  # $import jobs, run by the bulk worker
        from fhir_server.subscriptions import SubscriptionService, SubscriptionValidator
        # R4 Subscriptions (docs/adr/0007-subscriptions.md): checked and activated when written, matched after
        # each commit, notified from background threads; the ones in effect are loaded from the store
        self.resources.validator = SubscriptionValidator(self.resources.validator, self)
        self.operations.validator = SubscriptionValidator(self.operations.validator, self, activate=False)
        self.subscriptions = SubscriptionService(self)
        self.add_write_listener(self.subscriptions.on_write)
        self.subscriptions.load()

    def _instant_now(self) -> str:
        """meta.lastUpdated from the settings' clock (a fake one in tests of the record's timed rules)."""
        return self.settings.clock().astimezone(timezone.utc).isoformat(timespec="microseconds").replace(
            "+00:00", "Z")

    def add_write_listener(self, listener: Callable[[StoredResource], None]) -> None:
        """Call ``listener`` with every version written through the services, after its commit."""
        self.write_listeners.append(listener)

    def _written(self, stored: StoredResource) -> None:
        for listener in self.write_listeners:
            try:
                listener(stored)
            except Exception:  # one feature's failure must not starve the others of the event
                log.exception("write listener %r failed for %s/%s", listener, stored.type, stored.id)

    @property
    def definitions(self) -> Definitions:
        return self.engine.definitions

    @property
    def renderer(self) -> Renderer:
        return self.engine.renderer

    @property
    def indexer(self) -> Indexer:
        return self.engine.indexer

    def capability_json(self, base_url: str) -> bytes:
        """The encoded CapabilityStatement, kept until a SearchParameter changes: clients poll ``/metadata``
        and encoding it anew cost ~0.9 ms of CPU per request."""
        version = self.engine.registry.version
        cached = self._capability_json.get(base_url)
        if cached is None or cached[0] != version:
            if len(self._capability_json) >= 16:  # one entry per address the server is reached by
                self._capability_json.clear()
            cached = self._capability_json[base_url] = (version, jsonio.dumps(self.capability(base_url)))
        return cached[1]

    def capability(self, base_url: str) -> dict:
        from fhir_server.services.capability import capability_statement
        version = self.engine.registry.version  # read first: a change while building makes it stale at once
        if self._capability is None or self._capability[0] != version:
            self._capability = (version, capability_statement(self.definitions, self.engine.registry))
        statement = dict(self._capability[1], implementation={"description": "DMP FHIR server", "url": base_url})
        if not isinstance(self.gate, OpenGate):  # the SMART endpoints, where clients get their tokens
            import auth
            server_root = base_url.rsplit("/fhir", 1)[0]
            statement["rest"] = [dict(statement["rest"][0], security=auth.capability_security(server_root + "/auth"))]
        from fhir_server.policy.gate import RecordGate
        if isinstance(self.gate, RecordGate):  # $emergency-access and $close need the record's rules
            from fhir_server.services.capability import with_record_operations
            statement = with_record_operations(statement)
        return statement

    @staticmethod
    def compartment_clause(rtype: str, compartment_type: str, compartment_id: str, params: tuple[str, ...]):
        """A clause matching resources of ``rtype`` in the compartment: any of its linking parameters."""
        value = (ReferenceValue(compartment_type, compartment_id),)
        clauses = tuple(Clause(p, "reference", None, value) for p in params)
        return clauses[0] if len(clauses) == 1 else AnyOf(clauses)


class FHIRFlask(Flask):
    """Flask, minus a per-request cost this server has no use for.

    Flask asks ``inspect.iscoroutinefunction`` about every hook and view on every request, in case one is
    ``async def`` (nine times per read here, a few microseconds each); the answer never changes for a given
    function, so it is remembered. Async views are still run through ``async_to_sync`` as Flask does."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: dict[Callable, Callable] = {}

    def ensure_sync(self, func: Callable) -> Callable:
        known = self._sync_functions.get(func)
        if known is None:
            known = self._sync_functions[func] = super().ensure_sync(func)
        return known


def settle_heap() -> None:
    """Put what start-up loaded (definitions, profiles, value sets, the app) out of the garbage collector's sight.

    A long-running process keeps these ~120k objects for its whole life; the cyclic collector's full collections
    walked them all (~60 ms each, every thread stopped), which showed as latency spikes in a server and as wasted
    CPU in a bulk load. Processes forked afterwards (load and import workers) inherit the frozen state."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, *, store: Store | None = None, gate: AccessGate | None = None,
               engine: Engine | None = None, bulk_worker: bool = False) -> Flask:
    """Build the Flask application. Tests pass their own store, gate and engine; ``serve`` passes settings
    and ``bulk_worker=True`` in each worker process (one background export thread per process)."""
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store_url)
    # whether a client application was withdrawn (fhir-server clients revoke), with the in-process authorization server
    client_revoked: Callable[[str], bool] | None = None
    if gate is None and settings.insecure_no_auth:
        gate = OpenGate()
    elif gate is None:  # SMART access tokens of the in-process authorization server (auth/), ADR 0005
        from auth import token_authority
        from fhir_server.access.smart import build_gate
        client_revoked = lambda client: token_authority(store).client_revoked(client)  # noqa: E731
        gate = build_gate(settings, lambda: token_authority(store).jwks(),
                          lambda jti: token_authority(store).is_revoked(jti), client_revoked=client_revoked)
    app = FHIRFlask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    server = FHIRServer(settings, engine or Engine.build(), store, gate)
    app.extensions["fhir"] = server
    server.subscriptions.owner_revoked = client_revoked  # a withdrawn client's subscriptions stop too
    from fhir_server import audit  # every access traced as an AuditEvent (docs/adr/0008-traceability.md)
    audit.install(app, server)

    from fhir_server.http import errors
    from fhir_server.http.api import api
    from fhir_server.http.responses import TypeConverter, before_request
    errors.register(app)
    app.url_map.converters["type"] = TypeConverter
    from fhir_server.http import cors
    cors.init_app(app)
    app.before_request(before_request)
    app.before_request(server.search_parameters.before_request)
    app.register_blueprint(api, url_prefix="/fhir")
    from fhir_server.http.bundle_api import bundle_api
    from fhir_server.http.operations_api import operations_api
    app.register_blueprint(bundle_api, url_prefix="/fhir")
    app.register_blueprint(operations_api, url_prefix="/fhir")
    from fhir_server.http.bulk_api import bulk_api
    app.register_blueprint(bulk_api, url_prefix="/fhir")
    from fhir_server import policy  # the record's rules: $emergency-access, notifications (issue #7)
    policy.install(app, server, jobs=bulk_worker)
    import auth  # the SMART authorization server: /auth/..., /fhir/.well-known/smart-configuration
    auth.init_app(app, server)
    app.url_map.strict_slashes = False
    logging.basicConfig(level=logging.INFO)
    if bulk_worker and worker_enabled():  # FHIR_SERVER_BULK_WORKER=0 opts a process out
        server.bulk.start_worker()
        atexit.register(server.bulk.stop_worker)  # a running job is handed back to the other processes
    if bulk_worker and settings.purge_interval > 0:  # expired care items removed periodically (carehistory.purge)
        from fhir_server.carehistory.purge import purge_task
        task = purge_task(server, settings.purge_interval)
        task.start()
        atexit.register(task.stop)
    return app
