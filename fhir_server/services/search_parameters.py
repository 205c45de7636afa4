"""Custom SearchParameter resources: checked when written, applied to searches and indexing.

A SearchParameter written through the API (or ``fhir-server load``) whose ``status`` is
``active`` or ``draft`` is applied to the server's :class:`SearchParameterRegistry`: searches
accept its code from then on, resources of its base types written from then on are indexed
for it, and the CapabilityStatement lists it. Deleting it, or setting its status to
``retired`` (or ``unknown``), withdraws it. Resources stored before a parameter existed are
not indexed for it until ``fhir-server reindex`` runs.

Design
------

*Whose registry.* The :class:`~fhir_server.app.Engine` (definitions, validator, registry,
indexer) is costly to build (~0.7 s) and is shared: by the tests between applications, by
nothing in production (one per worker process). Custom parameters are data of one *store*, so
each :class:`~fhir_server.app.FHIRServer` gets its own search state: :meth:`SearchParameterService.__init__`
makes a copy of the engine (well under a millisecond) with a copy of its registry
(:meth:`SearchParameterRegistry.copy`: same parameters, including any the engine was built
with, and same version) and a shallow copy of its :class:`Indexer` pointing at that copy: the
type model, the FHIRPath compiler, its cache of compiled expressions and the index plans
built so far are shared or copied; a plan is rebuilt, lazily, once the copy's registry
changes. The engine passed in is never mutated.

*Checked where.* The checks beyond structure (:meth:`SearchParameterService.check`) run in the
validator the server's services use (:class:`CheckingValidator` wraps the structural one), so
create, update, patch, conditional writes, Bundles, ``load`` and ``$validate`` all apply them
and refuse a bad definition with a 400 OperationOutcome naming the faulty element.

*Applied when.* ``ResourceService`` reports every committed version (``on_write``):
:meth:`SearchParameterService.on_write` applies a SearchParameter change to this process at
once. Other worker processes sharing the store see it through :meth:`SearchParameterService.refresh`,
run before requests: at most every :data:`REFRESH_INTERVAL` seconds it reads the newest
SearchParameter version and the number of versions (one ``history(count=1)``) and reloads every
stored SearchParameter when they changed. At start-up every stored one is loaded.

*Conflicts.* A custom parameter may not redefine an R4 one (same base and code, or same
URL): "already defined by R4". Among the applied ones, URLs and (base, code) pairs are
unique. The check on write uses what this process has loaded, so two processes writing
conflicting parameters within one refresh interval could both succeed: the applied set is then
decided deterministically (lowest resource id wins, the other is logged and ignored), the
same in every process.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Callable

from fhir_server.model import jsonio
from fhir_server.model.outcome import Issue
from fhir_server.search.expressions import Unsupported
from fhir_server.search.parameters import PARAM_TYPES, expression_for_type
from fhir_server.services.store_mirror import StoreMirror
from fhir_server.store.base import Store, StoredResource

if TYPE_CHECKING:  # pragma: no cover
    from fhir_server.app import Engine

__all__ = ["SearchParameterService", "CheckingValidator", "REFRESH_INTERVAL", "APPLIED_STATUSES"]

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 5.0  # seconds between two looks at the store for other processes' changes
APPLIED_STATUSES = frozenset({"active", "draft"})
SUPPORTED_TYPES = PARAM_TYPES - {"special"}  # special parameters need code of their own
# a search parameter name: no '.', ':', '$', ',', '|', '=' (chains, modifiers, composite values, lists)
# and not starting with '_' (reserved for the parameters of every resource)
CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
TYPE = "SearchParameter"


def _fhirpathpy_problem(expression: str, base: str) -> None:
    """Raise ValueError when fhirpathpy cannot parse ``expression`` entirely, or cannot run it.

    ``fhirpathpy.compile`` recovers from syntax errors silently (``Patient.name.(((`` compiles),
    so the grammar is run here with an error listener that raises; unknown functions and wrong
    arities only show when the expression runs, so it is run once on an empty ``base`` resource.
    """
    from antlr4 import CommonTokenStream, InputStream
    from antlr4.error.ErrorListener import ErrorListener
    from fhirpathpy import compile as fp_compile
    from fhirpathpy.models import models
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    class Raise(ErrorListener):
        def syntaxError(self, recognizer, offending, line, column, msg, e):  # noqa: N802 (antlr API)
            raise ValueError(f"syntax error at {column}: {msg}")

    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(Raise())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(Raise())
    try:
        parser.entireExpression()
        fp_compile(expression, models["r4"])({"resourceType": base})
    except ValueError:
        raise
    except Exception as exc:  # fhirpathpy: unknown functions, wrong arity...
        raise ValueError(str(exc) or type(exc).__name__) from None


class CheckingValidator:
    """The structural validator, plus :meth:`SearchParameterService.check` for SearchParameter resources."""

    def __init__(self, inner: Any, service: "SearchParameterService") -> None:
        self.inner = inner
        self.service = service

    def validate(self, resource: Any) -> list[Issue]:
        issues = self.inner.validate(resource)
        if (isinstance(resource, dict) and resource.get("resourceType") == TYPE
                and not any(i.severity in ("error", "fatal") for i in issues)):
            issues = issues + self.service.check(resource)
        return issues

    def __getattr__(self, name: str) -> Any:  # everything else the structural validator offers
        if name in ("inner", "service"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class SearchParameterService(StoreMirror):
    """The custom SearchParameters of one server: checks, application to the registry, refresh."""

    mirrored_type = TYPE

    def __init__(self, engine: "Engine", store: Store, *, interval: float = REFRESH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        registry = engine.registry.copy()  # same parameters and version as the engine's, from now on apart
        indexer = engine.indexer.fork(registry)
        self.registry = registry
        self.indexer = indexer
        self.definitions = engine.definitions
        self.store = store
        self.init_mirror(interval, clock)
        #: the engine the server must use: own registry and indexer, validator that runs :meth:`check`
        self.engine = dataclasses.replace(engine, registry=registry, indexer=indexer,
                                          validator=CheckingValidator(engine.validator, self))
        self.served = frozenset(engine.definitions.served)
        # what R4 (and the engine's own configuration) defines, never overridden: URLs, (type, code) pairs
        self.r4_urls = frozenset(sp.get("url") for sp in engine.definitions.search_parameters)
        self.builtin_urls = self.r4_urls | {p.url for t in self.served for p in registry.for_type(t).values()}
        self.builtin_codes = {t: frozenset(registry.for_type(t)) for t in self.served}
        self._known: dict[str, tuple[int, dict | None]] = {}  # id -> (version, body if active/draft)
        self._applied: dict[str, dict] = {}  # id -> the SearchParameter applied to the registry

    # -- checks ------------------------------------------------------------------------------
    def check(self, sp: dict) -> list[Issue]:
        """What is wrong with a (structurally valid) SearchParameter as a definition for this server.

        Errors name the element (``SearchParameter.expression``...). Conflicts with R4 and with the
        applied parameters are only checked for the statuses that apply (active, draft).
        """
        issues = self._definition_issues(sp)
        if sp.get("status") in APPLIED_STATUSES:
            issues += self._conflicts(sp)
        return issues

    def _definition_issues(self, sp: dict) -> list[Issue]:
        def error(message: str, where: str, code: str = "invalid") -> None:
            issues.append(Issue("error", code, message, f"{TYPE}.{where}"))

        issues: list[Issue] = []
        code, ptype, expression = sp.get("code"), sp.get("type"), sp.get("expression")
        bases = [b for b in sp.get("base") or [] if isinstance(b, str)]
        if not isinstance(code, str) or not CODE.fullmatch(code):
            error(f"'{code}' is not a usable search parameter code: letters, digits, '-' and '_' only, "
                  "starting with a letter or digit", "code")
        for i, base in enumerate(bases):
            if base not in self.served:
                error(f"'{base}' is not a resource type served here", f"base[{i}]")
        if ptype not in SUPPORTED_TYPES:
            error(f"search parameters of type '{ptype}' are not supported here (supported: "
                  f"{', '.join(sorted(SUPPORTED_TYPES))})", "type", "not-supported")
            return issues
        if not isinstance(expression, str) or not expression.strip():
            error("a custom search parameter needs an expression (FHIRPath) to be indexed", "expression",
                  "required")
            return issues
        for base in (b for b in bases if b in self.served):
            part = expression_for_type(expression, base)
            if part is None:
                error(f"the expression has no part that applies to {base} (each '|' part must start with "
                      f"'{base}.' or be relative to it)", "expression")
                continue
            problem = self._compile_problem(part, base, fallback=ptype != "composite")
            if problem:
                error(f"the expression does not compile for {base}: {problem}", "expression")
            elif ptype == "composite":
                issues += self._component_issues(sp, part, base)
        if ptype == "composite" and not sp.get("component"):
            error("a composite search parameter needs components", "component", "required")
        return issues

    def _root(self, base: str) -> frozenset:
        return frozenset({base if base in self.indexer.model.known_types else "Resource"})

    def _compile_problem(self, expression: str, base: str, *, fallback: bool) -> str | None:
        """Why the indexer could not evaluate ``expression`` on ``base`` (None: it can), as it would compile it."""
        try:
            _, out = self.indexer.compiler.compile(expression, self._root(base))
        except Unsupported as exc:
            if not fallback:
                return str(exc)
            try:
                _fhirpathpy_problem(expression, base)  # the indexer falls back to fhirpathpy
            except ValueError as exc2:
                return f"{exc2} ({exc})"
            return None
        except Exception as exc:  # pragma: no cover - defensive: compile must not crash a write
            return str(exc)
        if not out:
            return f"it can never select anything on {base}"
        return None

    def _component_issues(self, sp: dict, part: str, base: str) -> list[Issue]:
        issues: list[Issue] = []
        try:
            _, ctxs = self.indexer.compiler.compile(part, self._root(base))
        except Unsupported:
            return issues  # reported by the caller
        for i, component in enumerate(sp.get("component") or []):
            url = component.get("definition")
            ctype = self._param_type(url)
            if ctype is None or ctype in ("composite", "special"):
                why = "is not a known search parameter" if ctype is None else f"is a {ctype} parameter"
                issues.append(Issue("error", "invalid", f"component {url} {why}",
                                    f"{TYPE}.component[{i}].definition"))
                continue
            try:
                self.indexer.compiler.compile(component.get("expression") or "", ctxs)
            except Unsupported as exc:
                issues.append(Issue("error", "invalid", f"the component expression does not compile: {exc}",
                                    f"{TYPE}.component[{i}].expression"))
        return issues

    def _definer(self, url: str) -> str:
        return "R4" if url in self.r4_urls else "this server's configuration"

    def _param_type(self, url: Any) -> str | None:
        """The type of the R4 or custom (active, possibly not applied yet) parameter with that URL."""
        if not isinstance(url, str):
            return None
        param = self.registry.by_url(url)
        if param is not None:
            return param.type
        with self._lock:
            return next((sp.get("type") for _, sp in self._known.values() if sp and sp.get("url") == url), None)

    def _conflicts(self, sp: dict) -> list[Issue]:
        issues: list[Issue] = []
        url, code, rid = sp.get("url"), sp.get("code"), sp.get("id")
        if url in self.builtin_urls:
            issues.append(Issue("error", "duplicate", f"{url} is already defined by {self._definer(url)}",
                                f"{TYPE}.url"))
        for base in sp.get("base") or []:
            if code in self.builtin_codes.get(base, ()):
                definer = self._definer(self.registry.get(base, code).url)
                issues.append(Issue("error", "duplicate", f"the search parameter '{code}' of {base} is already "
                                    f"defined by {definer}; choose another code", f"{TYPE}.code"))
        with self._lock:
            others = [(oid, other) for oid, other in self._applied.items() if oid != rid]
        for oid, other in others:
            if other.get("url") == url:
                issues.append(Issue("error", "duplicate", f"the active SearchParameter/{oid} already has the url "
                                    f"{url}", f"{TYPE}.url"))
            shared = set(other.get("base") or ()) & set(sp.get("base") or ())
            if other.get("code") == code and shared:
                issues.append(Issue("error", "duplicate", f"the active SearchParameter/{oid} already defines "
                                    f"'{code}' for {', '.join(sorted(shared))}", f"{TYPE}.code"))
        return issues

    # -- applying ----------------------------------------------------------------------------
    @property
    def applied(self) -> list[dict]:
        """The custom SearchParameters in effect, by resource id."""
        with self._lock:
            return [self._applied[k] for k in sorted(self._applied)]

    def on_write(self, stored: StoredResource) -> None:
        """The ``ResourceService`` hook: apply a committed SearchParameter version to this process."""
        if stored.type != TYPE:
            return
        body = None if stored.deleted or stored.body is None else jsonio.loads(stored.body)
        with self._lock:
            known = self._known.get(stored.id)
            if known is not None and known[0] > stored.version:
                return  # a newer version was applied already
            self._known[stored.id] = (stored.version, body if self._applies(body) else None)
            self._marker = None  # the next refresh reloads from the store (heals any race with a reload)
            self._reconcile()

    @staticmethod
    def _applies(body: dict | None) -> bool:
        return isinstance(body, dict) and body.get("status") in APPLIED_STATUSES

    def _reconcile(self) -> None:
        """Make the registry hold exactly the applicable known parameters (lowest id first on conflicts)."""
        desired: dict[str, dict] = {}
        urls: set = set()
        keys: set = set()
        for rid in sorted(self._known):
            sp = self._known[rid][1]
            if sp is None:
                continue
            if self._definition_issues(sp) or self._conflicts_r4(sp):
                log.warning("SearchParameter/%s is not applied: its definition is invalid here", rid)
                continue
            mine = {(b, sp["code"]) for b in sp.get("base") or ()}
            if sp.get("url") in urls or mine & keys:
                log.warning("SearchParameter/%s is not applied: another active one has its url or code", rid)
                continue
            urls.add(sp.get("url"))
            keys |= mine
            desired[rid] = sp
        changed = False
        for rid, old in list(self._applied.items()):
            new = desired.get(rid)
            if new is None or not self._same_identity(old, new):
                self.registry.remove(old["url"])
                del self._applied[rid]
                changed = True
        for rid, sp in desired.items():
            if self._applied.get(rid) != sp:
                try:
                    self.registry.add(sp)
                except ValueError as exc:
                    log.warning("SearchParameter/%s is not applied: %s", rid, exc)
                    continue
                self._applied[rid] = sp
                changed = True
        if changed:
            log.info("custom search parameters in effect: %s",
                     ", ".join(f"{'/'.join(sp['base'])}:{sp['code']}" for sp in self.applied) or "none")

    def _conflicts_r4(self, sp: dict) -> bool:
        return sp.get("url") in self.builtin_urls or any(
            sp.get("code") in self.builtin_codes.get(b, ()) for b in sp.get("base") or ())

    @staticmethod
    def _same_identity(old: dict, new: dict) -> bool:
        """Whether re-adding ``new`` replaces every registry entry of ``old`` (same url, code and bases)."""
        return (old.get("url"), old.get("code"), sorted(old.get("base") or ())) == \
            (new.get("url"), new.get("code"), sorted(new.get("base") or ()))

    # -- loading and refreshing --------------------------------------------------------------
    def mirror_store(self) -> Store:
        return self.store

    def load(self) -> int:
        """(Re)load every stored SearchParameter and apply the active ones; how many are in effect."""
        with self._lock:
            marker = self._store_marker()  # before reading: a write in between makes the next refresh reload
            known: dict[str, tuple[int, dict | None]] = {}
            for stored in self.store.iterate(TYPE):
                body = jsonio.loads(stored.body)
                known[stored.id] = (stored.version, body if self._applies(body) else None)
            self._known = known
            self._reconcile()
            self._marker = marker
            self._checked_at = self.clock()
            return len(self._applied)

    def before_request(self) -> None:
        """Flask ``before_request`` hook: a cheap, periodic :meth:`refresh` (store errors are logged, not raised)."""
        try:
            self.refresh()
        except Exception:
            log.exception("cannot refresh the custom search parameters; keeping the current ones")
