"""Structural validation of FHIR R4 JSON resources, driven by StructureDefinition snapshots.

At start-up the StructureDefinitions are compiled into a tree of :class:`Node` (one per
resource, data type and backbone element) whose :class:`Child` entries are keyed by their
JSON property name, so that ``valueQuantity`` and ``_birthDate`` are plain dictionary
look-ups. ``validate`` then walks the resource once against that tree (R4 JSON rules:
http://hl7.org/fhir/R4/json.html) and, when it is done, runs the FHIRPath invariants
collected on the way.

The same compiler and walk serve profiles (:mod:`fhir_server.validation.profiles`): a
profile's snapshot is indexed by element id (:class:`View`), so the elements of a slice
(``Patient.identifier:INS-NIR.system``) compile into the slice's own node, and a few
attributes of :class:`Child` carry what only profiles say: cardinality beyond 0/1, fixed
and pattern values, slicing (:mod:`fhir_server.validation.slicing`), type profiles,
extensible and preferred bindings, reference target types. The base definitions use
them too where they say so (reference targets, ``SimpleQuantity``).

Issue codes: ``structure`` for JSON shape (unknown property, array vs object, JSON
kind of a primitive, null, empty array/object, too many items, a type or reference
target not allowed), ``required`` for a missing mandatory element or slice, ``value``
for a primitive that breaks its format or a fixed/pattern value, ``code-invalid`` for a
binding, ``invariant`` for constraints, ``extension`` for extensions, ``informational``
for what could not be checked, and ``not-supported`` for resource types without a
definition.
"""
from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_server.definitions import Definitions
from fhir_server.model.outcome import Issue
from fhir_server.validation.invariants import Invariant, InvariantEngine, absent_keys
from fhir_server.validation.primitives import FHIR_TYPE_EXTENSION, Primitive, build_primitives
from fhir_server.validation.checks import type_checks
from fhir_server.validation.terminology import Terminology

PRIMITIVE, COMPLEX, RESOURCE = 1, 2, 3
REPEATED = 4  # a profile walk's pruned child whose value can only repeat the base walk (_Compiler.pruned)
SYSTEM_TYPE_PREFIX = "http://hl7.org/fhirpath/System."
CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
SYSTEM_TYPES = {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
                "Date": "date", "DateTime": "dateTime", "Time": "time"}
BOUND_TYPES = frozenset({"code", "Coding", "CodeableConcept"})
TEMPORAL_TYPES = frozenset({"date", "dateTime", "instant", "time"})
RESOURCE_TYPES_VALUE_SET = "http://hl7.org/fhir/ValueSet/resource-types"
MAX_STRING = 1024 * 1024  # http://hl7.org/fhir/R4/datatypes.html#string: at most 1 MB
NOTHING = object()  # no fixed/pattern value
KNOWN = object()  # what an extension look-up answers for an extension it knows but does not check


@dataclass(frozen=True)
class SliceIssue(Issue):
    """An issue found inside a slice: the message names the slice, ``plain`` is the message without it."""

    plain: str = ""


def issue_key(issue: Issue) -> tuple:
    """What makes two issues the same finding (a slice-tagged one equals its untagged twin)."""
    return (issue.severity, issue.code, getattr(issue, "plain", "") or issue.diagnostics, issue.expression)


class Node:
    """The children of one complex type, backbone element or resource, by JSON name."""

    __slots__ = ("type_path", "children", "required", "members", "invariants", "is_resource",
                 "extension_value_keys", "temporal", "minimums", "slice_minimums", "url", "label", "check",
                 "contexts", "inert", "pruned", "absent", "relevant", "hooks", "below")

    def __init__(self, type_path: str, is_resource: bool = False) -> None:
        self.type_path = type_path  # what fhirpathpy knows this node as ("Period", "Observation.component")
        self.children: dict[str, Child] = {}
        self.required: list[tuple[tuple[str, ...], str]] = []  # (JSON keys incl. "_x", element name)
        self.members: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # element -> (keys, _keys)
        self.invariants: tuple[Invariant, ...] = ()
        self.is_resource = is_resource
        self.extension_value_keys: frozenset[str] | None = None  # set on Extension nodes only
        self.temporal: dict[str, str] = {}  # JSON key -> date/dateTime/instant/time, for the engine
        self.minimums: list[tuple[tuple[str, ...], str, int]] = []  # (keys, name, min) for min > 1
        self.slice_minimums: list[tuple[str, Child]] = []  # sliced children with a mandatory slice
        self.url: str | None = None  # the extension this node defines (extension definitions)
        self.label = ""  # the profile this node comes from, for messages
        self.check: Callable[[Any, str, list], None] | None = None  # a rule of its type (checks.py)
        self.contexts: frozenset[str] | None = None  # where an extension definition may be used
        self.inert: bool | None = None  # profile compilers: see _Compiler.inert (None: not computed yet)
        self.pruned: Node | None = None  # profile compilers: see _Compiler.pruned (None: not made yet)
        self.absent: dict[int, frozenset | None] | None = None  # id(invariant) -> invariants.absent_keys
        self.relevant: frozenset[str] | None = None  # pruned nodes of base definitions: see _Compiler.pruned
        self.hooks: frozenset[str] | None = None  # keys that may hold extensions here (see _bare)
        self.below: tuple[tuple[str, Node], ...] = ()  # complex children (key, node), for _bare


class Child:
    """One JSON property allowed in a :class:`Node` (a choice element has one per type)."""

    __slots__ = ("key", "name", "array", "max", "min", "kind", "primitive", "node", "binding", "binding_type",
                 "choice", "companion", "invariants", "type_path", "contained", "fixed", "pattern", "slicing",
                 "weak", "targets", "message", "lookup_extension", "slice_name", "resource_profiles", "profile",
                 "max_length", "owner", "simple")

    def __init__(self, key: str, name: str, max_: str, base_max: str | None = None) -> None:
        self.key = key
        self.name = name  # element name as in the definition ("value[x]", "given")
        array_max = base_max if base_max is not None else max_  # JSON arrays follow the base definition
        self.array = array_max != "1" and array_max != "0"
        self.max: int | None = None if max_ == "*" else int(max_)
        self.min = 0
        self.kind = COMPLEX
        self.primitive: Primitive | None = None
        self.node: Node | None = None
        self.binding: Any = None  # required binding (RequiredBinding or bindings.Binding)
        self.binding_type = ""
        self.choice: str | None = None  # the choice group ("value[x]") when a variant of one
        self.companion = False  # may carry a "_key" property with id/extension
        self.invariants: tuple[Invariant, ...] = ()
        self.type_path = ""
        self.contained = False  # Resource-typed and contained (shares the container's %rootResource)
        self.fixed: Any = NOTHING
        self.pattern: Any = NOTHING
        self.slicing: Any = None  # slicing.Slicing
        self.weak: Any = None  # extensible/preferred binding (bindings.Binding)
        self.targets: frozenset[str] | None = None  # allowed reference target types
        self.message: str | None = None  # why the element is not allowed (max 0 in a profile)
        self.lookup_extension = False  # an extension without a definition here: look its url up
        self.slice_name: str | None = None
        self.resource_profiles: tuple[str, ...] = ()  # profiles a nested resource must meet
        self.profile = ""  # the profile that constrains this element (for messages)
        self.max_length: int | None = None
        self.owner: tuple[str, bool] | None = None  # extension elements: (what they extend, is it a resource)
        self.simple = False  # a primitive with nothing but its type to check (see _Compiler.simplify)


def _cap(code: str) -> str:
    return code[0].upper() + code[1:]


def element_id(element: dict) -> str:
    """The element's id; derived from path and slice name when the definition has none."""
    eid = element.get("id")
    if eid:
        return eid
    return element["path"] + (":" + element["sliceName"] if element.get("sliceName") else "")


class View:
    """A StructureDefinition snapshot indexed by element id: children, slices, elements by path."""

    __slots__ = ("sd", "key", "url", "type", "root", "by_id", "by_path", "children", "slices")

    def __init__(self, sd: dict, key: str) -> None:
        self.sd = sd
        self.key = key
        self.url = sd.get("url", "")
        self.type = sd.get("type", "")
        self.by_id: dict[str, dict] = {}
        self.by_path: dict[str, dict] = {}
        self.children: dict[str, list[dict]] = {}
        self.slices: dict[str, list[dict]] = {}
        self.root: dict | None = None
        for element in sd["snapshot"]["element"]:
            eid = element_id(element)
            self.by_id[eid] = element
            head, dot, last = eid.rpartition(".")
            if not dot:
                self.root = element
                self.by_path.setdefault(element["path"], element)
                continue
            name, colon, _ = last.partition(":")
            if colon:
                self.slices.setdefault(head + "." + name, []).append(element)
            else:
                self.children.setdefault(head, []).append(element)
                if ":" not in head:
                    self.by_path.setdefault(element["path"], element)

    @property
    def root_id(self) -> str:
        return element_id(self.root) if self.root is not None else self.type


class DefinitionSource:
    """Where the compiler finds StructureDefinitions: base types by name, anything by canonical URL.

    This one holds only the R4 subset of :class:`Definitions`; the profile registry
    (:mod:`fhir_server.validation.profiles`) offers the same methods over everything it loaded.
    """

    def __init__(self, structures: Mapping[str, dict]) -> None:
        self.structures = structures
        self._by_url = {sd.get("url"): sd for sd in structures.values() if sd.get("url")}

    def core(self, name: str) -> dict | None:
        return self.structures.get(name)

    def url(self, url: str) -> dict | None:
        return self._by_url.get(url.split("|")[0])

    def type_of(self, url: str) -> str | None:
        sd = self.url(url)
        return sd.get("type") if sd else None


class RequiredOnly(Terminology):
    """The base terminology: required bindings from the pre-expanded R4 value sets, nothing else."""

    def binding(self, value_set: str, strength: str, profile: bool = False) -> Any:
        return self.required(value_set) if strength == "required" else None


EXTENSION_KEYS = ("extension", "modifierExtension")


def _plain_child(child: Child) -> bool:
    """Does ``child`` check nothing beyond its base definition (a profile walk's view of it)?"""
    binding = child.binding
    return (child.weak is None and child.fixed is NOTHING and child.pattern is NOTHING and child.slicing is None
            and child.max != 0 and child.message is None and not child.invariants and child.max_length is None
            and not child.resource_profiles and not child.profile
            and (binding is None or (not binding.expansion.opaque and not binding.expansion.open_systems)))


def _bare(node: Node, value: dict) -> bool:
    """No extension in ``value`` (of ``node``'s type) that a profile walk would look at.

    Extensions are found where the node has an extension element or a primitive that may
    have a ``_x`` companion (``node.hooks``), and below, in its complex children. Anything
    else (an unknown ``_x``, an extension where none may be, a contained resource) is a finding
    of the base walk, which the profile walk would only repeat.
    """
    hooks = node.hooks
    if hooks is None:
        hooks = _hook(node)
    if not hooks.isdisjoint(value):
        return False
    for key, below in node.below:
        item = value.get(key)
        if type(item) is dict:
            if not _bare(below, item):
                return False
        elif type(item) is list:
            for element in item:
                if type(element) is dict and not _bare(below, element):
                    return False
    return True


def _hook(node: Node) -> frozenset[str]:
    """Set ``node.hooks`` and ``node.below`` (see :func:`_bare`), once per node."""
    hooks = [key for key, child in node.children.items() if child.lookup_extension]
    hooks += ["_" + key for key, child in node.children.items() if child.companion]
    node.below = tuple((key, child.node) for key, child in node.children.items()
                       if child.kind == COMPLEX and child.node is not None and not child.lookup_extension)
    node.hooks = frozenset(hooks)
    return node.hooks


class _Compiler:
    """Turns StructureDefinition snapshots into :class:`Node` trees (once per definition).

    ``profile`` compilers (used for profiles only) leave out the invariants the base
    definitions already carry (``base_invariants``: the base walk runs them), report
    value sets they cannot expand, and keep the choice types a profile removes as
    "not allowed" entries. ``terminology.binding(url, strength, profile)`` gives the
    objects that check codes.
    """

    def __init__(self, source: Any, engine: InvariantEngine, terminology: Any, primitives: dict[str, Primitive],
                 *, profile: bool = False, base_invariants: frozenset = frozenset(),
                 slicing: Any = None, notes: dict[str, str] | None = None,
                 checks: Mapping[str, Callable[[Any, str, list], None]] | None = None) -> None:
        self.source = source
        self.engine = engine
        self.terminology = terminology
        self.primitives = primitives
        self.profile = profile
        self.base_invariants = base_invariants
        self.slicing = slicing  # module that compiles slicing (None: slicing is not compiled)
        self.notes = notes if notes is not None else {}  # what could not be compiled, and why
        self.checks = checks or {}  # rules of the specification by type name (checks.py)
        self.views: dict[int, tuple[dict, View]] = {}
        self.nodes: dict[tuple[str, str, str], Node] = {}
        self._pending: dict[tuple[str, str, str], Node] = {}
        self._depth = 0
        self.lock = threading.RLock()

    # -- snapshots --------------------------------------------------------------------------

    def view(self, sd: dict) -> View:
        found = self.views.get(id(sd))
        if found is None:
            key = f"{sd.get('url') or sd.get('id')}|{sd.get('version', '')}#{id(sd)}"
            found = self.views[id(sd)] = (sd, View(sd, key))
        return found[1]

    def _invariants(self, element: dict | None) -> tuple[Invariant, ...]:
        if element is None:
            return ()
        out = []
        for constraint in element.get("constraint", []):
            if self.profile and (constraint.get("key"), constraint.get("expression")) in self.base_invariants:
                continue
            invariant = self.engine.compile(constraint)
            if invariant is not None:
                out.append(invariant)
        return tuple(out)

    # -- nodes ------------------------------------------------------------------------------

    def _cached(self, cache_key: tuple, make: Callable[[], Node], fill: Callable[[Node], None]) -> Node:
        """The node under ``cache_key``, built once.

        Nodes refer to each other (Identifier -> Reference -> Identifier), so a node is
        registered before it is filled; other threads only see nodes once the outermost
        compilation is complete.
        """
        node = self.nodes.get(cache_key)
        if node is not None:
            return node
        with self.lock:
            node = self.nodes.get(cache_key) or self._pending.get(cache_key)
            if node is not None:
                return node
            node = self._pending[cache_key] = make()
            self._depth += 1
            complete = False
            try:
                fill(node)
                complete = True
            finally:
                self._depth -= 1
                if self._depth == 0:
                    if complete:
                        self.nodes.update(self._pending)
                    self._pending.clear()
        return node

    def resource_node(self, sd: dict) -> Node:
        view = self.view(sd)

        def make() -> Node:
            node = Node(sd["type"], is_resource=True)
            node.label = sd.get("url", "") if sd.get("derivation") == "constraint" else ""
            return node

        def fill(node: Node) -> None:
            self._fill(node, view, view.root_id, sd["type"], at_resource_root=True)
            node.invariants = self._invariants(view.root)
            node.check = self.checks.get(sd["type"])
        return self._cached((view.key, view.root_id, "resource"), make, fill)

    def datatype_node(self, sd: dict) -> Node:
        view = self.view(sd)

        def make() -> Node:
            node = Node(sd["type"])
            node.label = sd.get("url", "") if sd.get("derivation") == "constraint" else ""
            return node

        def fill(node: Node) -> None:
            self._fill(node, view, view.root_id, sd["type"])
            node.invariants = self._invariants(view.root)
            node.check = self.checks.get(sd["type"])
            if sd["type"] == "Extension":
                # "Patient", "HumanName.family", or "<profile url>#Organization" (an element of a profile)
                contexts = [c["expression"].rpartition("#")[2] for c in sd.get("context") or ()
                            if c.get("type") == "element" and isinstance(c.get("expression"), str)]
                node.contexts = frozenset(contexts) if contexts else None
                node.extension_value_keys = self._extension_value_keys(node, sd)
                if sd.get("derivation") == "constraint":
                    url = view.by_path.get("Extension.url", {}).get("fixedUri")
                    node.url = url or sd.get("url")
        return self._cached((view.key, view.root_id, "type"), make, fill)

    # -- what a profile walk may skip -------------------------------------------------------

    def inert(self, node: Node) -> bool:
        """Can a profile walk leave out the content of ``node`` (extension instances aside)?

        The profile walk runs after the base walk, over the same JSON, and only keeps the issues
        the base walk did not find. A node compiled from a base definition (no profile label),
        with nothing below it that only profiles check, finds at each place exactly what the base
        node of the same type found there, or less (no type checks, no base invariants): walking
        it again costs time and adds nothing. Nothing below means: no invariants (the profile
        compiler keeps only those the base walk does not run), no slicing, fixed or pattern
        value, extensible or preferred binding, no required binding that may say "not checked"
        (profile walks report codes they cannot check, the base walk does not), no element a
        profile removed, no nested resource with profiles. Extension instances are the one thing
        that depends on the data (the profile walk checks them against the definitions of
        profiles/): the walk skips a node only when the value carries none it would look at (:func:`_bare`).

        Computed once per node (nodes are immutable once compiled); only meaningful for
        nodes of a profile compiler.
        """
        inert = node.inert
        if inert is None:
            inert = node.inert = self._nothing_reachable(node)
        return inert

    def pruned(self, node: Node) -> Node:
        """``node`` as a profile walk needs it: the values that can only repeat the base walk are not checked.

        Children whose value checks are the base walk's own (same primitive, same required
        binding and reference targets, nothing only profiles check: :func:`_plain_child`) become
        ``REPEATED`` copies: the walk still sees the property (shape, choices, ``_x`` companions,
        cardinality), but does not check its value again. In a node of a profile, a binding or
        reference targets may be the profile's own, so such children are kept. In a node of a
        base definition, the missing required elements are the base walk's findings too (same
        message), so they are not looked for. Complex children stay (their content may hold
        extensions or bound codes); the walk prunes their nodes in turn.

        A pruned node of a base definition also says which JSON keys of a value are worth a look
        (``relevant``: the children kept, extensions, ``_x`` companions): a value with none of them
        is not walked at all.
        """
        pruned = node.pruned
        if pruned is None:
            pruned = node.pruned = self._prune(node)
        return pruned

    @staticmethod
    def _prune(node: Node) -> Node:
        base_definition = not node.label
        children = {}
        for key, child in node.children.items():
            if (child.kind in (PRIMITIVE, RESOURCE) and _plain_child(child)
                    and (base_definition or (child.binding is None and child.targets is None))):
                repeated = copy.copy(child)
                repeated.kind, repeated.simple = REPEATED, False
                child = repeated
            children[key] = child
        pruned = copy.copy(node)
        pruned.children = children
        if base_definition:
            pruned.required, pruned.minimums = [], []
            if not pruned.slice_minimums:  # (a node's invariants are run on its value, not here)
                pruned.relevant = frozenset(
                    [key for key, child in children.items() if child.kind != REPEATED]
                    + ["_" + key for key, child in children.items() if child.companion] + list(EXTENSION_KEYS))
        pruned.pruned = pruned
        return pruned

    @staticmethod
    def _nothing_reachable(start: Node) -> bool:
        """No profile-only rule on ``start`` or any node reachable from it (see :meth:`inert`)."""
        stack, seen = [start], {id(start)}
        while stack:
            node = stack.pop()
            if node.inert is not None and node is not start:
                if node.inert:
                    continue  # its whole reach is known to be plain
                return False
            if node.label or node.invariants or node.check is not None or node.slice_minimums or node.url:
                return False
            for child in node.children.values():
                if child.lookup_extension:
                    if child.key not in EXTENSION_KEYS:
                        return False
                    continue  # extension instances: looked for in the data by the walk
                if not _plain_child(child):
                    return False
                below = child.node
                if below is not None and id(below) not in seen:
                    seen.add(id(below))
                    stack.append(below)
        return True

    def _extension_value_keys(self, node: Node, sd: dict) -> frozenset[str]:
        if sd.get("derivation") != "constraint":
            return frozenset(k for c in node.children.values() if c.choice == "value[x]"
                             for k in (c.key, "_" + c.key))
        base = self.source.core("Extension")
        return self.datatype_node(base).extension_value_keys if base else frozenset()

    def inline_node(self, view: View, eid: str, model: str, type_root: dict | None = None) -> Node:
        def make() -> Node:
            node = Node(model)
            node.label = view.url if view.sd.get("derivation") == "constraint" else ""
            return node

        def fill(node: Node) -> None:
            self._fill(node, view, eid, model)
            invariants = list(self._invariants(view.by_id.get(eid)))
            if type_root is not None:  # a data type expanded in a profile: its own invariants too
                keys = {i.key for i in invariants}
                invariants += [i for i in self._invariants(type_root) if i.key not in keys]
            node.invariants = tuple(invariants)
            node.check = self.checks.get(model)
            if model == "Extension":
                base = self.source.core("Extension")
                node.extension_value_keys = self.datatype_node(base).extension_value_keys if base else None
                url_element = view.by_id.get(eid + ".url")
                node.url = url_element.get("fixedUri") if url_element else None
        return self._cached((view.key, eid, model), make, fill)

    def _fill(self, node: Node, view: View, eid: str, model: str, at_resource_root: bool = False) -> None:
        for element in view.children.get(eid, ()):
            compiled = self._compile_element(view, element, model, at_resource_root)
            for child in compiled:
                node.children[child.key] = child
                if child.lookup_extension and model != "Element":  # on a primitive: where is not known here
                    child.owner = (model, at_resource_root)
            name = element["path"].rpartition(".")[2]
            keys = tuple(c.key for c in node.children.values() if c.name == name)
            companions = tuple("_" + c.key for c in node.children.values() if c.name == name and c.companion)
            base = name[:-3] if name.endswith("[x]") else name
            node.members[base] = (keys, companions)
            minimum = element.get("min", 0) or 0
            if minimum > 0:  # a type the profile removed counts as present: "not allowed" says it all
                node.required.append((keys + companions, name))
            if minimum > 1:
                node.minimums.append((keys, name, minimum))
            for child in compiled:
                if child.slicing is not None and any(s.min > 0 for s in child.slicing.slices):
                    node.slice_minimums.append((child.key, child))
        node.temporal = {key: c.primitive.name for key, c in node.children.items()
                         if c.kind == PRIMITIVE and c.primitive.name in TEMPORAL_TYPES}

    def _base_element(self, element: dict) -> dict | None:
        """The element of the base type or resource that ``element`` constrains."""
        path = (element.get("base") or {}).get("path") or element["path"]
        sd = self.source.core(path.split(".")[0])
        return self.view(sd).by_path.get(path) if sd else None

    def _compile_element(self, view: View, element: dict, model: str, at_resource_root: bool) -> list[Child]:
        name = element["path"].rpartition(".")[2]
        max_ = element.get("max", "*")
        base_max = (element.get("base") or {}).get("max")
        own_invariants = self._invariants(element)
        eid = element_id(element)
        if "contentReference" in element:
            target = element["contentReference"].partition("#")[2]
            child = Child(name, name, max_, base_max)
            child.min = element.get("min", 0) or 0
            target_view = view if target in view.by_id else self.view(self.source.core(target.split(".")[0]))
            child.node = self.inline_node(target_view, target, target)
            child.type_path = target
            return [child]
        types = element.get("type") or []
        is_choice = name.endswith("[x]")
        variants: dict[str, dict] = {}
        if is_choice:  # type slices of a choice ("value[x]:valueQuantity") constrain one variant each
            for slice_element in view.slices.get(eid, ()):
                slice_types = slice_element.get("type") or []
                if len(slice_types) == 1:
                    variants[slice_types[0]["code"]] = slice_element
        children = []
        for type_ in types:
            code = type_["code"]
            key = name[:-3] + _cap(code) if is_choice else name
            defining = variants.get(code, element)
            if defining is not element:
                defining_types = defining.get("type") or []
                type_ = defining_types[0] if defining_types else type_
            child = Child(key, name, defining.get("max", max_) if defining is not element else max_, base_max)
            child.min = element.get("min", 0) or 0
            if is_choice:
                child.choice = name
            self._type(child, view, defining, type_, model, at_resource_root)
            binding = defining.get("binding") or element.get("binding")
            if binding and binding.get("valueSet") and code in BOUND_TYPES:
                strength = binding.get("strength")
                if strength == "required":
                    child.binding = self.terminology.binding(binding["valueSet"], strength, self.profile)
                    child.binding_type = code
                elif strength in ("extensible", "preferred") and self.profile:
                    child.weak = self.terminology.binding(binding["valueSet"], strength, self.profile)
                    child.binding_type = code
            if child.kind == PRIMITIVE and isinstance(defining.get("maxLength"), int):
                child.max_length = defining["maxLength"]
            self._values(child, defining, code, is_choice)
            if defining is not element:
                self._values(child, element, code, is_choice)
            invariants = own_invariants
            if defining is not element:
                invariants = invariants + self._invariants(defining)
            if child.kind == COMPLEX and child.node is not None and child.type_path != model + "." + name:
                child.invariants = invariants  # the type's own invariants sit on its node
            elif child.kind == PRIMITIVE:
                child.invariants = invariants
                child.type_path = model + "." + name
            if code == "Reference":
                child.targets = self._targets(type_)
            if self.slicing is not None and not is_choice and view.slices.get(eid):
                child.slicing = self.slicing.compile_slicing(self, view, element, child, model, at_resource_root)
            children.append(self.simplify(child))
        if (self.profile or view.sd.get("derivation") == "constraint") and is_choice and types:
            children += self._removed_variants(element, name, types, max_, base_max)
        return children

    @staticmethod
    def simplify(child: Child) -> Child:
        """Mark a primitive whose value has only its type to meet (no binding, fixed or pattern value,
        length, invariant): the walk checks those in place, without a call or a path (most of them)."""
        child.simple = (child.kind == PRIMITIVE and child.binding is None and child.weak is None
                        and child.fixed is NOTHING and child.pattern is NOTHING and child.max_length is None
                        and not child.invariants)
        return child

    def _removed_variants(self, element: dict, name: str, types: list[dict], max_: str,
                          base_max: str | None) -> list[Child]:
        """The choice types the base allows and the profile removed: present, they are an error."""
        base = self._base_element(element)
        if base is None:
            return []
        kept = {t["code"] for t in types}
        allowed = ", ".join(sorted(kept))
        removed = []
        for type_ in base.get("type") or []:
            code = type_["code"]
            if code in kept:
                continue
            child = Child(name[:-3] + _cap(code), name, "0", base_max)
            child.choice = name
            child.message = (f"type {code} is not allowed for {element['path']} here (allowed: {allowed})")
            removed.append(child)
        return removed

    def _values(self, child: Child, element: dict, code: str, is_choice: bool) -> None:
        """fixed[x] / pattern[x] of ``element`` that apply to the variant ``code``."""
        for key, value in element.items():
            if key.startswith("fixed"):
                if not is_choice or key[5:] == _cap(code):
                    child.fixed = value
            elif key.startswith("pattern"):
                if not is_choice or key[7:] == _cap(code):
                    child.pattern = value

    def _targets(self, type_: dict) -> frozenset[str] | None:
        """Resource types a Reference may point to (None: any)."""
        profiles = type_.get("targetProfile") or []
        if not profiles:
            return None
        names = set()
        for url in profiles:
            url = url.split("|")[0]
            if url.startswith(CORE_PREFIX) and "/" not in url[len(CORE_PREFIX):]:
                name = url[len(CORE_PREFIX):]
                sd = self.source.core(name)
                name = sd.get("type", name) if sd else name
            else:
                name = self.source.type_of(url)
            if name is None:
                return None  # a target profile this server does not know: do not guess
            if name == "Resource":
                return None
            names.add(name)
        return frozenset(names)

    def _is_resource_type(self, code: str) -> bool:
        sd = self.source.core(code)
        return sd is not None and sd.get("kind") == "resource"

    def _type(self, child: Child, view: View, element: dict, type_: dict, model: str,
              at_resource_root: bool) -> None:
        code = type_["code"]
        eid = element_id(element)
        if code.startswith(SYSTEM_TYPE_PREFIX):
            fhir_type = next((e.get("valueUrl") for e in type_.get("extension", [])
                              if e.get("url") == FHIR_TYPE_EXTENSION), None)
            fhir_type = fhir_type or SYSTEM_TYPES.get(code[len(SYSTEM_TYPE_PREFIX):], "string")
            if at_resource_root and child.name == "id":
                fhir_type = "id"  # R4 snapshots type Resource.id as System.String; the spec says id
            child.kind = PRIMITIVE
            child.primitive = self.primitives[fhir_type]
            child.companion = at_resource_root  # Element.id and Extension.url have no "_" form
        elif code in self.primitives:
            child.kind = PRIMITIVE
            child.primitive = self.primitives[code]
            child.companion = code != "xhtml"
        elif code == "Resource" or self._is_resource_type(code):
            child.kind = RESOURCE
            child.contained = child.name == "contained"
            child.resource_profiles = tuple(type_.get("profile") or ())
            if code != "Resource":
                child.targets = frozenset({code})  # a profile narrowed Resource to this type
        elif code in ("BackboneElement", "Element") and view.children.get(eid):
            child.node = self.inline_node(view, eid, model + "." + child.name)
            child.type_path = model + "." + child.name
        else:
            target = None
            for profile in type_.get("profile", []):
                found = self.source.url(profile)
                if found is not None and found.get("type") == code:
                    target = found  # SimpleQuantity, an extension definition, a data type profile
                elif found is None:
                    self.notes.setdefault(profile, f"{element['path']}: profile {profile} is not known here; "
                                                   f"checked as a plain {code}")
            if target is None:
                target = self.source.core(code)
            if target is None:
                raise KeyError(f"{element['path']}: no StructureDefinition for type {code}")
            if view.children.get(eid):  # the data type expanded in a profile (or extension definition)
                type_root = self.view(target).root
                child.node = self.inline_node(view, eid, code, type_root=type_root)
                if code == "Extension" and child.node.url is None:
                    child.node.url = self.datatype_node(target).url
            else:
                child.node = self.datatype_node(target)
            child.type_path = target["type"]
            if code == "Extension" and child.node.url is None:
                child.lookup_extension = True


class StructureValidator:
    """Validates resources against the R4 definitions; see the module documentation."""

    def __init__(self, definitions: Definitions | None = None, invariants: bool = True, *,
                 compiler: _Compiler | None = None, resource_types: frozenset[str] | None = None,
                 structures: Callable[[str], dict | None] | None = None,
                 extensions: Callable[[str], Node | None] | None = None,
                 unknown_extension: str | None = None, nested: bool = True,
                 conforms: Callable[[str, Any], bool] | None = None,
                 strings: Callable[[str, str, str, list], None] | None = None, contained: bool = True,
                 skip_inert: bool = False, skip_absent: bool = True) -> None:
        """The legacy form ``StructureValidator(definitions)`` compiles every resource of ``definitions``.

        The profile engine passes its own ``compiler``, a ``structures`` look-up (resource
        type -> definition, compiled lazily), ``extensions`` (url -> node of a known
        extension definition), ``unknown_extension`` (severity of an extension nobody
        defines here; None says nothing), ``nested`` (whether contained and bundled
        resources are walked) and ``conforms`` (profile discriminators). ``skip_inert``: a profile
        walk whose issues are only kept when the base walk did not find them; it leaves out
        what can only repeat the base walk (:meth:`_Compiler.inert`). ``skip_absent``: invariants
        that hold for want of the elements they look at are not evaluated (:func:`absent_keys`).
        """
        if compiler is None:
            self._engine = InvariantEngine()
            structures_map = definitions.structures
            compiler = _Compiler(DefinitionSource(structures_map), self._engine,
                                 RequiredOnly(definitions.required_value_sets), build_primitives(structures_map),
                                 checks=type_checks(definitions.required_value_sets))
            self._resources: dict[str, Node] = {
                sid: compiler.resource_node(sd) for sid, sd in structures_map.items()
                if sd.get("kind") == "resource" and not sd.get("abstract")
                and sd.get("derivation") != "constraint"}
            r4_types = definitions.required_value_sets.get(RESOURCE_TYPES_VALUE_SET, {}).get("codes", [])
            resource_types = frozenset(code for _, code in r4_types)
            dom = structures_map.get("DomainResource")
        else:
            self._engine = compiler.engine
            self._resources = {}
            dom = compiler.source.core("DomainResource")
        self._compiler = compiler
        self._structures = structures
        self._element_node = compiler.datatype_node(compiler.source.core("Element"))  # "_x" companions
        self._r4_resource_types = (resource_types or frozenset()) | frozenset(self._resources)
        self._run_invariants = invariants
        self._dom3_message = "dom-3: " + _human(dom, "dom-3", DOM_3)
        self._extensions = extensions
        self._unknown_extension = unknown_extension
        self._nested = nested
        self._conforms = conforms
        self._opaque: Node | None = None
        self._strings = strings  # option checks of string values (checks.string_checks)
        self._contained = contained  # validate contained resources
        self._skip_inert = skip_inert
        self._skip_absent = skip_absent
        self._full = self
        if skip_inert:  # slice membership ("fits") needs every error, repeated or not: a twin that walks all
            self._full = copy.copy(self)
            self._full._skip_inert = False
            self._full._full = self._full

    @property
    def skipped_invariants(self) -> dict[str, str]:
        """Constraint keys not evaluated by fhirpathpy, with the reason.

        Known at start-up (structural checks, functions fhirpathpy lacks), plus the keys that
        raised inside fhirpathpy at run time so far.
        """
        return dict(sorted({**self._engine.skipped, **self._engine.failures}.items()))

    def knows(self, resource_type: str) -> bool:
        return self._resource_node(resource_type) is not None

    def _resource_node(self, rtype: str) -> Node | None:
        node = self._resources.get(rtype)
        if node is None and self._structures is not None:
            sd = self._structures(rtype)
            if sd is not None:
                node = self._resources[rtype] = self._compiler.resource_node(sd)
        return node

    def validate(self, resource: dict) -> list[Issue]:
        issues: list[Issue] = []
        try:
            if not isinstance(resource, dict):
                issues.append(Issue("error", "structure",
                                    f"a resource must be a JSON object, not {_kind(resource)}"))
                return issues
            rtype = resource.get("resourceType")
            if not isinstance(rtype, str) or not rtype:
                issues.append(Issue("error", "structure", "the resource has no resourceType"))
                return issues
            node = self._resource_node(rtype)
            if node is None:
                issues.append(Issue("error", "not-supported", f"unknown resource type '{rtype}'"
                                    if rtype not in self._r4_resource_types
                                    else f"resource type '{rtype}' has no definition on this server"))
                return issues
            self.walk(node, resource, rtype, issues)
        except Exception as exc:  # a validator bug must not become a 500; say what happened
            issues.append(Issue("error", "exception", f"validation failed unexpectedly: {exc!r}"))
        return issues

    def fits(self, child: Child, value: Any) -> bool:
        """Does ``value`` validate against ``child`` without errors (invariants aside)? For slicing."""
        issues: list[Issue] = []
        self._full._value(child, value, "", issues, None, {}, {})
        return not any(i.severity in ("error", "fatal") for i in issues)

    def conforms(self, url: str, value: Any) -> bool:
        """Does ``value`` meet profile ``url``? For profile discriminators and typed resources."""
        return self._conforms is not None and self._conforms(url, value)

    def walk(self, node: Node, resource: dict, path: str, issues: list[Issue]) -> None:
        """Validate ``resource`` against the resource ``node`` (a base type or a profile)."""
        jobs: list[tuple] | None = [] if self._run_invariants else None
        if self._skip_inert:
            node = node.pruned or self._compiler.pruned(node)
        self._resource(node, resource, path, issues, jobs, resource)
        if jobs:
            self._invariants(jobs, issues)

    def walk_value(self, node: Node, value: Any, path: str, issues: list[Issue], resource: dict) -> None:
        """Validate a data type instance (an extension, a CodeableConcept...) against ``node``."""
        jobs: list[tuple] | None = [] if self._run_invariants else None
        self._object(node, value, path, issues, jobs, resource, resource)
        if jobs is not None and node.invariants:
            jobs.append((node.invariants, value, node, node.type_path, path, resource, resource))
        if jobs:
            self._invariants(jobs, issues)

    # -- the walk -----------------------------------------------------------------------------

    def _resource(self, node: Node, data: dict, path: str, issues: list, jobs: list | None,
                  root: dict) -> None:
        self._object(node, data, path, issues, jobs, data, root)
        if node.check is not None:
            node.check(data, path, issues)
        if "contained" in data and self._nested and self._contained:
            self._dom3(data, path, issues)
        if jobs is not None and node.invariants:
            jobs.append((node.invariants, data, node, None, path, data, root))

    def _dom3(self, resource: dict, path: str, issues: list) -> None:
        """dom-3: a contained resource is referenced from elsewhere in the resource, or refers to it."""
        contained = resource["contained"]
        if type(contained) is not list:
            return
        fragments = _fragments(resource)
        for i, item in enumerate(contained):
            cid = item.get("id") if isinstance(item, dict) else None
            if isinstance(cid, str) and "#" + cid not in fragments and "#" not in _fragments(item):
                issues.append(Issue("error", "invariant", self._dom3_message, f"{path}.contained[{i}]"))

    def _nested_resource(self, child: Child, data: Any, path: str, issues: list, jobs: list | None,
                         root: dict) -> None:
        if not self._nested and not child.resource_profiles:
            return  # a profile walk: the base walk covered it
        if child.contained and not self._contained:
            return
        if not isinstance(data, dict):
            issues.append(Issue("error", "structure", f"{child.name} must be a resource (a JSON object), "
                                                      f"not {_kind(data)}", path))
            return
        rtype = data.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            issues.append(Issue("error", "structure", "the resource has no resourceType", path))
            return
        nested_root = root if child.contained else data
        if child.targets is not None and rtype not in child.targets:
            issues.append(Issue("error", "structure", f"a {rtype} is not allowed here (allowed: "
                                f"{', '.join(sorted(child.targets))})", path))
            return
        if child.resource_profiles and self._conforms is not None:
            if not any(self._conforms(url, data) for url in child.resource_profiles):
                issues.append(Issue("error", "structure", f"the {rtype} does not conform to "
                                    + " or ".join(child.resource_profiles), path))
            if not self._nested:
                return
        node = self._resource_node(rtype)
        if node is None:
            if rtype in self._r4_resource_types:
                issues.append(Issue("warning", "not-supported",
                                    f"{rtype} has no definition on this server: it was not validated", path))
            else:
                issues.append(Issue("error", "structure", f"unknown resource type '{rtype}'", path))
            return
        self._resource(node, data, path, issues, jobs, nested_root)

    def _object(self, node: Node, data: dict, path: str, issues: list, jobs: list | None,
                resource: dict, root: dict) -> None:
        children = node.children
        choices: dict[str, str] | None = None
        for key, value in data.items():
            child = children.get(key)
            if child is None:
                if key[:1] == "_":
                    base = children.get(key[1:])
                    if base is not None and base.choice is not None:
                        if choices is None:
                            choices = {}
                        if not self._one_choice(base, choices, path, key, issues):
                            continue
                    self._companion(node, key, value, data, path, issues, jobs, resource, root)
                elif not (key == "resourceType" and node.is_resource):
                    issues.append(Issue("error", "structure", f"unknown element '{key}'", f"{path}.{key}"))
                continue
            if child.choice is not None:
                if choices is None:
                    choices = {}
                if not self._one_choice(child, choices, path, key, issues):
                    continue
            if child.max == 0:
                issues.append(Issue("error", "structure", child.message or f"'{key}' is not allowed here",
                                    f"{path}.{key}"))
            elif child.array:
                if type(value) is not list:
                    issues.append(Issue("error", "structure",
                                        f"'{key}' must be an array (it repeats), not {_kind(value)}",
                                        f"{path}.{key}"))
                    continue
                if not value:
                    issues.append(Issue("error", "structure", f"'{key}' must not be an empty array",
                                        f"{path}.{key}"))
                    continue
                if child.max is not None and len(value) > child.max:
                    issues.append(Issue("error", "structure", f"'{key}' has {len(value)} items, at most "
                                                              f"{child.max} allowed", f"{path}.{key}"))
                if child.slicing is not None:
                    self._sliced(child, key, value, data, path, issues, jobs, resource, root)
                    continue
                if child.kind == REPEATED:
                    continue  # a profile walk: the base walk checked these items (pruned node)
                companion = data.get("_" + key) if child.companion else None
                simple = child.simple
                for i, item in enumerate(value):
                    if item is None:
                        if not (type(companion) is list and i < len(companion)
                                and isinstance(companion[i], dict)):
                            issues.append(Issue("error", "structure",
                                                "null is only allowed in an array of primitives to line up "
                                                f"with '_{key}'", f"{path}.{key}[{i}]"))
                        continue
                    if simple and child.primitive.check(item) is None and not (type(item) is str and (
                            len(item) > MAX_STRING or self._strings is not None)):
                        continue  # nothing to say (what _value would find)
                    self._value(child, item, f"{path}.{key}[{i}]", issues, jobs, resource, root)
            elif type(value) is list:
                issues.append(Issue("error", "structure",
                                    f"'{key}' must be a single value, not an array (it does not repeat)",
                                    f"{path}.{key}"))
            elif value is None:
                issues.append(Issue("error", "structure", f"'{key}' must not be null", f"{path}.{key}"))
            elif child.simple:  # most primitives: checked here, _value (and a path) only for something to say
                if child.primitive.check(value) is not None or (type(value) is str and (
                        len(value) > MAX_STRING or self._strings is not None)):
                    self._value(child, value, f"{path}.{key}", issues, jobs, resource, root)
            elif child.kind != REPEATED:
                self._value(child, value, f"{path}.{key}", issues, jobs, resource, root)
        for keys, name in node.required:
            for k in keys:
                if k in data:
                    break
            else:
                issues.append(Issue("error", "required", f"required element '{name}' is missing"
                                    + _from(node), f"{path}.{name}"))
        if node.minimums:
            for keys, name, minimum in node.minimums:
                count = sum(len(data[k]) if type(data[k]) is list else 1 for k in keys if k in data)
                if 0 < count < minimum:
                    issues.append(Issue("error", "required", f"'{name}' has {count} item(s), at least {minimum} "
                                                             f"required" + _from(node), f"{path}.{name}"))
        for key, child in node.slice_minimums:
            if key not in data:
                child.slicing.check_counts([], [], f"{path}.{key}", issues)
        if node.extension_value_keys is not None:
            # an unknown "valueXxx" was reported above: count it as the value, not as ext-1
            has_value = (not node.extension_value_keys.isdisjoint(data)
                         or any(k.startswith(("value", "_value")) for k in data))
            if has_value == ("extension" in data):
                issues.append(Issue("error", "invariant", "ext-1: Must have either extensions or value[x], "
                                                          "not both" if has_value else
                                    "ext-1: Must have either extensions or value[x] (it has neither)", path))

    def _sliced(self, child: Child, key: str, items: list, data: dict, path: str, issues: list,
                jobs: list | None, resource: dict, root: dict) -> None:
        """A sliced repeating element: each item goes to the slice it matches, then slice rules."""
        slicing = child.slicing
        assignment = slicing.assign(items, self)
        companion = data.get("_" + key) if child.companion else None
        for i, item in enumerate(items):
            item_path = f"{path}.{key}[{i}]"
            if item is None:
                if not (type(companion) is list and i < len(companion) and isinstance(companion[i], dict)):
                    issues.append(Issue("error", "structure", "null is only allowed in an array of primitives to "
                                                              f"line up with '_{key}'", item_path))
                continue
            index = assignment[i]
            if index is None:
                self._value(child, item, item_path, issues, jobs, resource, root)
                continue
            chosen = slicing.slices[index]
            start = len(issues)
            self._value(chosen.child, item, item_path, issues, jobs, resource, root)
            for k in range(start, len(issues)):
                found = issues[k]
                plain = getattr(found, "plain", "") or found.diagnostics
                issues[k] = SliceIssue(found.severity, found.code, f"slice '{chosen.name}': {found.diagnostics}",
                                       found.expression, plain)
        slicing.check_counts(assignment, items, f"{path}.{key}", issues)

    @staticmethod
    def _one_choice(child: Child, choices: dict[str, str], path: str, key: str, issues: list) -> bool:
        """Records which variant of a choice an object uses; False when it already uses another."""
        other = choices.setdefault(child.choice, child.key)
        if other != child.key:
            issues.append(Issue("error", "structure", f"only one {child.choice} is allowed, found "
                                                      f"'{other}' and '{child.key}'", f"{path}.{key}"))
            return False
        return True

    def _value(self, child: Child, value: Any, path: str, issues: list, jobs: list | None,
               resource: dict, root: dict) -> None:
        kind = child.kind
        if kind == PRIMITIVE:
            problem = child.primitive.check(value)
            if problem is not None:
                issues.append(Issue("error", problem[0], problem[1], path))
                return
            if child.binding is not None:
                child.binding.check_code(value, path, issues)
            if child.weak is not None:
                child.weak.check_code(value, path, issues)
            if child.fixed is not NOTHING or child.pattern is not NOTHING:
                _fixed_or_pattern(child, value, path, issues)
            if type(value) is str and len(value) > MAX_STRING:
                issues.append(Issue("error", "value", f"'{child.key}' is longer than the 1 MB a FHIR value may have",
                                    path))
            if self._strings is not None and type(value) is str:
                self._strings(child.primitive.name, value, path, issues)
            if child.max_length is not None and type(value) is str and len(value) > child.max_length:
                issues.append(Issue("error", "value", f"'{child.key}' is {len(value)} characters long, at most "
                                                      f"{child.max_length} allowed", path))
            if jobs is not None and child.invariants:
                jobs.append((child.invariants, value, None, child.type_path, path, resource, root))
        elif kind == COMPLEX:
            if type(value) is not dict:
                issues.append(Issue("error", "structure",
                                    f"'{child.key}' must be a JSON object, not {_kind(value)}", path))
                return
            if not value or (len(value) == 1 and "id" in value):
                issues.append(Issue("error", "structure", f"'{child.key}' must not be empty (ele-1: "
                                                          "an element needs a value or children)", path))
                return
            node = child.node
            if child.lookup_extension and self._extensions is not None:
                node = self._extension(child, node, value, path, issues)
            if not self._skip_inert:
                self._object(node, value, path, issues, jobs, resource, root)
            elif not ((node.inert or (node.inert is None and self._compiler.inert(node))) and _bare(node, value)):
                pruned = node.pruned or self._compiler.pruned(node)
                if pruned.relevant is None or not pruned.relevant.isdisjoint(value):
                    self._object(pruned, value, path, issues, jobs, resource, root)
            if node.check is not None:
                node.check(value, path, issues)
            if child.binding is not None:
                if child.binding_type == "CodeableConcept":
                    child.binding.check_codeable_concept(value, path, issues)
                else:
                    child.binding.check_coding(value, path, issues)
            if child.weak is not None:
                if child.binding_type == "CodeableConcept":
                    child.weak.check_codeable_concept(value, path, issues)
                else:
                    child.weak.check_coding(value, path, issues)
            if child.fixed is not NOTHING or child.pattern is not NOTHING:
                _fixed_or_pattern(child, value, path, issues)
            if child.targets is not None:
                self._reference(child, value, path, issues, root)
            if jobs is not None:
                if node.invariants:
                    jobs.append((node.invariants, value, node, node.type_path, path, resource, root))
                if child.invariants:
                    jobs.append((child.invariants, value, node, child.type_path, path, resource, root))
        elif kind == RESOURCE:
            self._nested_resource(child, value, path, issues, jobs, root)

    def _extension(self, child: Child, node: Node, value: dict, path: str, issues: list) -> Node:
        """The node of the extension's definition when known here; otherwise say so (per settings)."""
        url = value.get("url")
        if not isinstance(url, str) or not url or ":" not in url:
            return node  # no url (reported), or a sub-extension's local name its parent did not define
        found = self._extensions(url)
        if found is KNOWN:
            return self._opaque_extension(node)
        if found is not None:
            if found.contexts is not None and child.owner and not _context_allows(found.contexts, child.owner, path):
                issues.append(Issue("error", "extension", f"the extension {url} is not allowed here: it may be used "
                                    f"on {', '.join(sorted(found.contexts))}, this is {child.owner[0]}", path))
            return found
        modifier = child.name == "modifierExtension"
        severity = "error" if modifier else self._unknown_extension
        if severity is not None:
            what = "modifier extension" if modifier else "extension"
            issues.append(Issue(severity, "extension", f"the {what} {url} is not known to this server"
                                + (" and cannot be ignored" if modifier else ": its content was not checked"),
                                path))
        return node

    def _opaque_extension(self, node: Node) -> Node:
        """``node`` (Extension) without look-ups below: an extension known here but checked elsewhere."""
        opaque = self._opaque
        if opaque is None:
            opaque = Node(node.type_path)
            for name in Node.__slots__:
                setattr(opaque, name, getattr(node, name))
            opaque.children = dict(node.children)
            for key, child in node.children.items():
                if child.lookup_extension:
                    plain = Child(child.key, child.name, "*")
                    for name in Child.__slots__:
                        setattr(plain, name, getattr(child, name))
                    plain.lookup_extension = False
                    opaque.children[key] = plain
            self._opaque = opaque
        return opaque

    def _reference(self, child: Child, value: dict, path: str, issues: list, root: dict) -> None:
        """The resource type a literal reference points to must be one the element allows."""
        reference = value.get("reference")
        found = None
        if isinstance(reference, str) and reference:
            if reference[0] == "#":
                contained = root.get("contained")
                for item in contained if isinstance(contained, list) else ():
                    if isinstance(item, dict) and item.get("id") == reference[1:]:
                        found = item.get("resourceType")
                        found = found if found in self._r4_resource_types else None
                        break
            elif not reference.startswith(("urn:", "?")):
                parts = reference.split("?")[0].split("/")
                if len(parts) >= 4 and parts[-2] == "_history":
                    parts = parts[:-2]
                if len(parts) >= 2 and parts[-2] in self._r4_resource_types:
                    found = parts[-2]
        declared = value.get("type")
        if found is None and isinstance(declared, str) and declared in self._r4_resource_types:
            found = declared
        if isinstance(found, str) and found not in child.targets:
            allowed = ", ".join(sorted(child.targets))
            issues.append(Issue("error", "structure", f"a reference to a {found} is not allowed here "
                                f"(allowed: {allowed})" + _from_child(child), path))

    def _companion(self, node: Node, key: str, value: Any, data: dict, path: str, issues: list,
                   jobs: list | None, resource: dict, root: dict) -> None:
        """``_x``: the id/extension of primitive ``x`` (http://hl7.org/fhir/R4/json.html#primitive)."""
        base = key[1:]
        child = node.children.get(base)
        where = f"{path}.{key}"
        if child is None or not child.companion:
            issues.append(Issue("error", "structure", f"unknown element '{key}'", where))
            return
        if child.max == 0:
            issues.append(Issue("error", "structure", child.message or f"'{key}' is not allowed here", where))
            return
        if child.array:
            if type(value) is not list:
                issues.append(Issue("error", "structure", f"'{key}' must be an array lined up with '{base}'",
                                    where))
                return
            values = data.get(base)
            aligned = True
            if type(values) is list and len(values) != len(value):
                aligned = False
                issues.append(Issue("error", "structure", f"'{key}' has {len(value)} items but '{base}' has "
                                                          f"{len(values)}: they must line up", where))
            for i, item in enumerate(value):
                item_path = f"{where}[{i}]"
                if item is None:
                    if aligned and not (type(values) is list and values[i] is not None):
                        issues.append(Issue("error", "structure", f"'{base}[{i}]' has neither a value nor "
                                                                  f"an extension", item_path))
                    continue
                self._element(item, key, item_path, issues, jobs, resource, root)
        elif type(value) is list:
            issues.append(Issue("error", "structure", f"'{key}' must be a single object, not an array",
                                where))
        else:
            self._element(value, key, where, issues, jobs, resource, root)

    def _element(self, value: Any, key: str, path: str, issues: list, jobs: list | None,
                 resource: dict, root: dict) -> None:
        if type(value) is not dict:
            issues.append(Issue("error", "structure", f"'{key}' must be a JSON object with id and/or "
                                                      f"extension, not {_kind(value)}", path))
        elif not value or (len(value) == 1 and "id" in value):
            issues.append(Issue("error", "structure", f"'{key}' must not be empty (ele-1: an element needs "
                                                      "a value or children)", path))
        else:
            self._object(self._element_node, value, path, issues, jobs, resource, root)

    # -- invariants ---------------------------------------------------------------------------

    def _invariants(self, jobs: list[tuple], issues: list[Issue]) -> None:
        """Evaluate the invariants collected by the walk; those that hold for want of their elements are skipped."""
        holds = self._engine.holds
        well_formed = not any(i.severity == "error" for i in issues)
        for invariants, data, node, type_path, path, resource, root in jobs:
            if node is None:
                members, temporal, absent = {}, None, None
            elif not self._skip_absent:
                members, temporal, absent = node.members, node.temporal, None
            else:
                members, temporal, absent = node.members, node.temporal, node.absent
                if absent is None:
                    absent = node.absent = {}
            for invariant in invariants:
                if absent is not None:
                    keys = absent.get(id(invariant), NOTHING)
                    if keys is NOTHING:  # computed once per node and invariant (compiled ones live forever)
                        keys = absent[id(invariant)] = absent_keys(invariant, members)
                    if keys is not None and keys.isdisjoint(data):
                        continue  # the pre-check would answer "holds" without reading anything else
                if not holds(invariant, data, members, type_path, resource, root, temporal, well_formed):
                    issues.append(Issue("error", "invariant", f"{invariant.key}: {invariant.human}", path))


DOM_3 = ("If the resource is contained in another resource, it SHALL be referred to from elsewhere "
         "in the resource or SHALL refer to the containing resource")


def _context_allows(contexts: frozenset[str], owner: tuple[str, bool], path: str) -> bool:
    """Extension context (type "element"): the extended element's type or path, or Resource for resources."""
    model, is_resource = owner
    if "Element" in contexts or model in contexts:
        return True
    if is_resource and {"Resource", "DomainResource"} & contexts:
        return True
    if not is_resource and "BackboneElement" in contexts and "." in model:
        return True
    where = re.sub(r"\[\d+\]", "", path).rsplit(".", 2)[0]  # Patient.name[0].extension[1] -> Patient.name
    return where in contexts


def _from(node: Node) -> str:
    return f" (profile {node.label})" if node.label else ""


def _from_child(child: Child) -> str:
    return f" (profile {child.profile})" if child.profile else ""


def _fixed_or_pattern(child: Child, value: Any, path: str, issues: list) -> None:
    if child.fixed is not NOTHING and not same_value(value, child.fixed):
        issues.append(Issue("error", "value", f"{_show(value)} is not the fixed value {_show(child.fixed)}"
                                              " the profile requires", path))
    if child.pattern is not NOTHING and not matches_pattern(value, child.pattern):
        issues.append(Issue("error", "value", f"{_show(value)} does not match the pattern {_show(child.pattern)}"
                                              " the profile requires", path))


def _show(value: Any, limit: int = 160) -> str:
    import json
    text = json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "…"


def same_value(value: Any, expected: Any) -> bool:
    """Exact equality of JSON values; numbers compare by value (1.0 == 1)."""
    if isinstance(expected, dict):
        return isinstance(value, dict) and value.keys() == expected.keys() and all(
            same_value(value[k], expected[k]) for k in expected)
    if isinstance(expected, list):
        return isinstance(value, list) and len(value) == len(expected) and all(
            same_value(a, b) for a, b in zip(value, expected))
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    if isinstance(expected, (int, float)) or _is_decimal(expected):
        return (isinstance(value, (int, float)) or _is_decimal(value)) and float(value) == float(expected)
    return value == expected


def matches_pattern(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x]: every property of the pattern is in the value; pattern list items each match one.

    (Loops rather than all()/any() over generators: slicing asks this for every item and slice.)
    """
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        for key, expected in pattern.items():
            if key not in value or not matches_pattern(value[key], expected):
                return False
        return True
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return False
        for expected in pattern:
            for item in value:
                if matches_pattern(item, expected):
                    break
            else:
                return False
        return True
    if type(pattern) is str:  # what same_value answers for a string, without its number checks
        return value == pattern
    return same_value(value, pattern)


def _is_decimal(value: Any) -> bool:
    return type(value).__name__ == "Decimal"


def _human(structure: dict | None, key: str, default: str) -> str:
    """The ``human`` text of constraint ``key`` on the root element of ``structure``."""
    elements = (structure or {}).get("snapshot", {}).get("element", [])
    for constraint in elements[0].get("constraint", []) if elements else []:
        if constraint.get("key") == key and constraint.get("human"):
            return constraint["human"]
    return default


def _fragments(value: Any, found: set[str] | None = None) -> set[str]:
    """Every string starting with '#' anywhere in ``value`` (references, canonicals, uris)."""
    if found is None:
        found = set()
    if isinstance(value, dict):
        for item in value.values():
            _fragments(item, found)
    elif isinstance(value, list):
        for item in value:
            _fragments(item, found)
    elif isinstance(value, str) and value[:1] == "#":
        found.add(value)
    return found


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a number"
