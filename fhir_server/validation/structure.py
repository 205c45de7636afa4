"""Structural validation of FHIR R4 JSON resources, driven by StructureDefinition snapshots.

At start-up every StructureDefinition of :class:`~fhir_server.definitions.Definitions`
is compiled into a tree of :class:`Node` (one per resource, data type and backbone
element) whose :class:`Child` entries are keyed by their JSON property name, so that
``valueQuantity`` and ``_birthDate`` are plain dictionary look-ups. ``validate`` then
walks the resource once against that tree (R4 JSON rules: http://hl7.org/fhir/R4/json.html)
and, when it is done, runs the FHIRPath invariants collected on the way.

Issue codes: ``structure`` for JSON shape (unknown property, array vs object, JSON
kind of a primitive, null, empty array/object, too many items), ``required`` for a
missing mandatory element, ``value`` for a primitive that breaks its format,
``code-invalid`` for a required binding, ``invariant`` for constraints, and
``not-supported`` for resource types without a definition.
"""
from __future__ import annotations

from typing import Any

from fhir_server.definitions import Definitions
from fhir_server.model.outcome import Issue
from fhir_server.validation.invariants import Invariant, InvariantEngine
from fhir_server.validation.primitives import FHIR_TYPE_EXTENSION, Primitive, build_primitives
from fhir_server.validation.terminology import RequiredBinding, Terminology

PRIMITIVE, COMPLEX, RESOURCE = 1, 2, 3
SYSTEM_TYPE_PREFIX = "http://hl7.org/fhirpath/System."
SYSTEM_TYPES = {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
                "Date": "date", "DateTime": "dateTime", "Time": "time"}
BOUND_TYPES = frozenset({"code", "Coding", "CodeableConcept"})
TEMPORAL_TYPES = frozenset({"date", "dateTime", "instant", "time"})
RESOURCE_TYPES_VALUE_SET = "http://hl7.org/fhir/ValueSet/resource-types"


class Node:
    """The children of one complex type, backbone element or resource, by JSON name."""

    __slots__ = ("type_path", "children", "required", "members", "invariants", "is_resource",
                 "extension_value_keys", "temporal")

    def __init__(self, type_path: str, is_resource: bool = False) -> None:
        self.type_path = type_path  # what fhirpathpy knows this node as ("Period", "Observation.component")
        self.children: dict[str, Child] = {}
        self.required: list[tuple[tuple[str, ...], str]] = []  # (JSON keys incl. "_x", element name)
        self.members: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # element -> (keys, _keys)
        self.invariants: tuple[Invariant, ...] = ()
        self.is_resource = is_resource
        self.extension_value_keys: frozenset[str] | None = None  # set on the Extension node only
        self.temporal: dict[str, str] = {}  # JSON key -> date/dateTime/instant/time, for the engine


class Child:
    """One JSON property allowed in a :class:`Node` (a choice element has one per type)."""

    __slots__ = ("key", "name", "array", "max", "kind", "primitive", "node", "binding", "binding_type",
                 "choice", "companion", "invariants", "type_path", "contained")

    def __init__(self, key: str, name: str, max_: str) -> None:
        self.key = key
        self.name = name  # element name as in the definition ("value[x]", "given")
        self.array = max_ != "1" and max_ != "0"
        self.max: int | None = None if max_ == "*" else int(max_)
        self.kind = COMPLEX
        self.primitive: Primitive | None = None
        self.node: Node | None = None
        self.binding: RequiredBinding | None = None
        self.binding_type = ""
        self.choice: str | None = None  # the choice group ("value[x]") when a variant of one
        self.companion = False  # may carry a "_key" property with id/extension
        self.invariants: tuple[Invariant, ...] = ()
        self.type_path = ""
        self.contained = False  # Resource-typed and contained (shares the container's %rootResource)


def _cap(code: str) -> str:
    return code[0].upper() + code[1:]


class _Compiler:
    """Turns the StructureDefinition snapshots into :class:`Node` trees (once)."""

    def __init__(self, definitions: Definitions, engine: InvariantEngine) -> None:
        self.structures = definitions.structures
        self.primitives = build_primitives(self.structures)
        self.terminology = Terminology(definitions.required_value_sets)
        self.engine = engine
        self.datatype_nodes: dict[str, Node] = {}
        self.inline_nodes: dict[tuple[str, str], Node] = {}
        self.url_to_id = {sd.get("url"): sid for sid, sd in self.structures.items() if sd.get("url")}
        self._children_index: dict[str, dict[str, list[dict]]] = {}

    # -- snapshots --------------------------------------------------------------------------

    def _children(self, sid: str, path: str) -> list[dict]:
        index = self._children_index.get(sid)
        if index is None:
            index = {}
            for element in self.structures[sid]["snapshot"]["element"]:
                if element.get("sliceName"):
                    continue
                parent, _, _ = element["path"].rpartition(".")
                if parent:
                    index.setdefault(parent, []).append(element)
            self._children_index[sid] = index
        return index.get(path, [])

    def _element(self, sid: str, path: str) -> dict:
        for element in self.structures[sid]["snapshot"]["element"]:
            if element["path"] == path and not element.get("sliceName"):
                return element
        raise KeyError(f"{sid} has no element {path}")

    def _invariants(self, element: dict) -> tuple[Invariant, ...]:
        compiled = (self.engine.compile(c) for c in element.get("constraint", []))
        return tuple(i for i in compiled if i is not None)

    # -- nodes ------------------------------------------------------------------------------

    def resource_node(self, sid: str) -> Node:
        sd = self.structures[sid]
        node = Node(sd["type"], is_resource=True)
        self._fill(node, sid, sd["type"], at_resource_root=True)
        node.invariants = self._invariants(self._element(sid, sd["type"]))
        return node

    def datatype_node(self, sid: str) -> Node:
        node = self.datatype_nodes.get(sid)
        if node is None:
            sd = self.structures[sid]
            node = self.datatype_nodes[sid] = Node(sd["type"])
            self._fill(node, sid, sd["type"])
            node.invariants = self._invariants(self._element(sid, sd["type"]))
            if sd["type"] == "Extension" and sid == "Extension":
                node.extension_value_keys = frozenset(
                    k for c in node.children.values() if c.choice == "value[x]" for k in (c.key, "_" + c.key))
        return node

    def inline_node(self, sid: str, path: str) -> Node:
        node = self.inline_nodes.get((sid, path))
        if node is None:
            node = self.inline_nodes[(sid, path)] = Node(path)
            self._fill(node, sid, path)
            node.invariants = self._invariants(self._element(sid, path))
        return node

    def _fill(self, node: Node, sid: str, path: str, at_resource_root: bool = False) -> None:
        for element in self._children(sid, path):
            for child in self._compile_element(sid, element, at_resource_root):
                node.children[child.key] = child
            name = element["path"].rpartition(".")[2]
            keys = tuple(c.key for c in node.children.values() if c.name == name)
            companions = tuple("_" + c.key for c in node.children.values() if c.name == name and c.companion)
            base = name[:-3] if name.endswith("[x]") else name
            node.members[base] = (keys, companions)
            if element.get("min", 0) > 0:
                node.required.append((keys + companions, name))
        node.temporal = {key: c.primitive.name for key, c in node.children.items()
                         if c.kind == PRIMITIVE and c.primitive.name in TEMPORAL_TYPES}

    def _compile_element(self, sid: str, element: dict, at_resource_root: bool) -> list[Child]:
        name = element["path"].rpartition(".")[2]
        max_ = element.get("max", "*")
        own_invariants = self._invariants(element)
        if "contentReference" in element:
            target = element["contentReference"].lstrip("#")
            child = Child(name, name, max_)
            child.node = self.inline_node(sid, target)
            child.type_path = target
            return [child]
        types = element.get("type") or []
        is_choice = name.endswith("[x]")
        children = []
        for type_ in types:
            code = type_["code"]
            key = name[:-3] + _cap(code) if is_choice else name
            child = Child(key, name, max_)
            if is_choice:
                child.choice = name
            self._type(child, sid, element, type_, at_resource_root)
            binding = element.get("binding")
            if (binding and binding.get("strength") == "required" and binding.get("valueSet")
                    and code in BOUND_TYPES):
                child.binding = self.terminology.required(binding["valueSet"])
                child.binding_type = code
            if child.kind == COMPLEX and child.node is not None and child.type_path != element["path"]:
                child.invariants = own_invariants  # the type's own invariants sit on its node
            elif child.kind == PRIMITIVE:
                child.invariants = own_invariants
                child.type_path = element["path"]
            children.append(child)
        return children

    def _type(self, child: Child, sid: str, element: dict, type_: dict, at_resource_root: bool) -> None:
        code = type_["code"]
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
        elif code == "Resource":
            child.kind = RESOURCE
            child.contained = child.name == "contained"
        elif code in ("BackboneElement", "Element") and self._children(sid, element["path"]):
            child.node = self.inline_node(sid, element["path"])
            child.type_path = element["path"]
        else:
            target = code
            for profile in type_.get("profile", []):
                profile_id = self.url_to_id.get(profile)
                if profile_id:  # SimpleQuantity, MoneyQuantity: the constrained snapshot
                    target = profile_id
            if target not in self.structures:
                raise KeyError(f"{element['path']}: no StructureDefinition for type {target}")
            child.node = self.datatype_node(target)
            child.type_path = self.structures[target]["type"]


class StructureValidator:
    """Validates resources against the R4 definitions; see the module documentation."""

    def __init__(self, definitions: Definitions, invariants: bool = True) -> None:
        self._engine = InvariantEngine()
        compiler = _Compiler(definitions, self._engine)
        self._resources: dict[str, Node] = {
            sid: compiler.resource_node(sid) for sid, sd in definitions.structures.items()
            if sd.get("kind") == "resource" and not sd.get("abstract")
            and sd.get("derivation") != "constraint"}
        self._element_node = compiler.datatype_node("Element")  # the "_x" companion of a primitive
        r4_types = definitions.required_value_sets.get(RESOURCE_TYPES_VALUE_SET, {}).get("codes", [])
        self._r4_resource_types = frozenset(code for _, code in r4_types) | frozenset(self._resources)
        self._run_invariants = invariants
        self._dom3_message = "dom-3: " + _human(definitions.structures.get("DomainResource"), "dom-3", DOM_3)

    @property
    def skipped_invariants(self) -> dict[str, str]:
        """Constraint keys not evaluated by fhirpathpy, with the reason.

        Known at start-up (structural checks, functions fhirpathpy lacks), plus the keys that
        raised inside fhirpathpy at run time so far.
        """
        return dict(sorted({**self._engine.skipped, **self._engine.failures}.items()))

    def knows(self, resource_type: str) -> bool:
        return resource_type in self._resources

    def validate(self, resource: dict) -> list[Issue]:
        issues: list[Issue] = []
        jobs: list[tuple] | None = [] if self._run_invariants else None
        try:
            if not isinstance(resource, dict):
                issues.append(Issue("error", "structure",
                                    f"a resource must be a JSON object, not {_kind(resource)}"))
                return issues
            rtype = resource.get("resourceType")
            if not isinstance(rtype, str) or not rtype:
                issues.append(Issue("error", "structure", "the resource has no resourceType"))
                return issues
            node = self._resources.get(rtype)
            if node is None:
                issues.append(Issue("error", "not-supported", f"unknown resource type '{rtype}'"
                                    if rtype not in self._r4_resource_types
                                    else f"resource type '{rtype}' has no definition on this server"))
                return issues
            self._resource(node, resource, rtype, issues, jobs, resource)
            if jobs:
                self._invariants(jobs, issues)
        except Exception as exc:  # a validator bug must not become a 500; say what happened
            issues.append(Issue("error", "exception", f"validation failed unexpectedly: {exc!r}"))
        return issues

    # -- the walk -----------------------------------------------------------------------------

    def _resource(self, node: Node, data: dict, path: str, issues: list, jobs: list | None,
                  root: dict) -> None:
        self._object(node, data, path, issues, jobs, data, root)
        if "contained" in data:
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
        if not isinstance(data, dict):
            issues.append(Issue("error", "structure", f"{child.name} must be a resource (a JSON object), "
                                                      f"not {_kind(data)}", path))
            return
        rtype = data.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            issues.append(Issue("error", "structure", "the resource has no resourceType", path))
            return
        node = self._resources.get(rtype)
        if node is None:
            if rtype in self._r4_resource_types:
                issues.append(Issue("warning", "not-supported",
                                    f"{rtype} has no definition on this server: it was not validated", path))
            else:
                issues.append(Issue("error", "structure", f"unknown resource type '{rtype}'", path))
            return
        self._resource(node, data, path, issues, jobs, root if child.contained else data)

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
            if child.array:
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
                companion = data.get("_" + key) if child.companion else None
                for i, item in enumerate(value):
                    item_path = f"{path}.{key}[{i}]"
                    if item is None:
                        if not (type(companion) is list and i < len(companion)
                                and isinstance(companion[i], dict)):
                            issues.append(Issue("error", "structure",
                                                "null is only allowed in an array of primitives to line up "
                                                f"with '_{key}'", item_path))
                        continue
                    self._value(child, item, item_path, issues, jobs, resource, root)
            elif child.max == 0:
                issues.append(Issue("error", "structure", f"'{key}' is not allowed here", f"{path}.{key}"))
            elif type(value) is list:
                issues.append(Issue("error", "structure",
                                    f"'{key}' must be a single value, not an array (it does not repeat)",
                                    f"{path}.{key}"))
            elif value is None:
                issues.append(Issue("error", "structure", f"'{key}' must not be null", f"{path}.{key}"))
            else:
                self._value(child, value, f"{path}.{key}", issues, jobs, resource, root)
        for keys, name in node.required:
            for k in keys:
                if k in data:
                    break
            else:
                issues.append(Issue("error", "required", f"required element '{name}' is missing",
                                    f"{path}.{name}"))
        if node.extension_value_keys is not None:
            # an unknown "valueXxx" was reported above: count it as the value, not as ext-1
            has_value = (not node.extension_value_keys.isdisjoint(data)
                         or any(k.startswith(("value", "_value")) for k in data))
            if has_value == ("extension" in data):
                issues.append(Issue("error", "invariant", "ext-1: Must have either extensions or value[x], "
                                                          "not both" if has_value else
                                    "ext-1: Must have either extensions or value[x] (it has neither)", path))

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
            self._object(node, value, path, issues, jobs, resource, root)
            if child.binding is not None:
                if child.binding_type == "CodeableConcept":
                    child.binding.check_codeable_concept(value, path, issues)
                else:
                    child.binding.check_coding(value, path, issues)
            if jobs is not None:
                if node.invariants:
                    jobs.append((node.invariants, value, node, node.type_path, path, resource, root))
                if child.invariants:
                    jobs.append((child.invariants, value, node, child.type_path, path, resource, root))
        else:
            self._nested_resource(child, value, path, issues, jobs, root)

    def _companion(self, node: Node, key: str, value: Any, data: dict, path: str, issues: list,
                   jobs: list | None, resource: dict, root: dict) -> None:
        """``_x``: the id/extension of primitive ``x`` (http://hl7.org/fhir/R4/json.html#primitive)."""
        base = key[1:]
        child = node.children.get(base)
        where = f"{path}.{key}"
        if child is None or not child.companion:
            issues.append(Issue("error", "structure", f"unknown element '{key}'", where))
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
        holds = self._engine.holds
        well_formed = not any(i.severity == "error" for i in issues)
        for invariants, data, node, type_path, path, resource, root in jobs:
            members, temporal = (node.members, node.temporal) if node is not None else ({}, None)
            for invariant in invariants:
                if not holds(invariant, data, members, type_path, resource, root, temporal, well_formed):
                    issues.append(Issue("error", "invariant", f"{invariant.key}: {invariant.human}", path))


DOM_3 = ("If the resource is contained in another resource, it SHALL be referred to from elsewhere "
         "in the resource or SHALL refer to the containing resource")


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
