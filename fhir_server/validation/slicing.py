"""Slicing: which slice each item of a sliced element belongs to, and the slice rules.

A profile slices a repeating element (``Patient.identifier``, ``Observation.category``,
``extension``) into named slices, each with its own definition (the slice's subtree of the
snapshot, compiled like any element) and cardinality. Items are matched to slices with the
discriminators (http://hl7.org/fhir/R4/profiling.html#discriminator):

- ``value`` / ``pattern``: the item's value at the discriminator path equals the slice's
  fixed value, or matches its pattern (also when the fixed/pattern value sits on an element
  above the path, e.g. ``coding.system`` under a ``patternCodeableConcept``), or is in the
  slice's required value set;
- ``exists``: the path is present (slice min >= 1) or absent (slice max = 0);
- ``type``: the item's type at the path (a resource's ``resourceType``) is one of the slice's;
- ``profile``: the item at the path conforms to the slice's type profile.

Paths are the FHIRPath subset the specification allows: element names, ``$this``,
``extension('url')``, ``ofType(Type)``. When a slice's discriminator cannot be evaluated
(``resolve()``, no value to compare with), or the slicing has no discriminator at all,
an item belongs to the slice when it validates against the slice's definition, as the
reference validator does.

The walk (:mod:`fhir_server.validation.structure`) then validates each item against its
slice's definition, and :meth:`Slicing.check_counts` reports slice cardinality, closed
slicing (items matching no slice), ``ordered`` and ``openAtEnd``.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fhir_server.model.outcome import Issue
from fhir_server.validation.structure import Child, View, _cap, element_id, matches_pattern, same_value

Matcher = Callable[[Any, Any], bool]  # (item, walker) -> does the item belong to the slice
STEP = re.compile(r"\s*([A-Za-z_$][\w$\-\[\]]*)(\((?:'[^']*'|[^)])*\))?\s*")


class Slice:
    __slots__ = ("name", "min", "max", "child", "matchers", "by_validation")

    def __init__(self, name: str, minimum: int, maximum: int | None, child: Child,
                 matchers: list[Matcher], by_validation: bool) -> None:
        self.name = name
        self.min = minimum
        self.max = maximum
        self.child = child
        self.matchers = matchers
        self.by_validation = by_validation  # matched by validating against the slice

    def matches(self, item: Any, walker: Any) -> bool:
        if self.by_validation:
            return walker.fits(self.child, item)
        for matcher in self.matchers:
            if not matcher(item, walker):
                return False
        return True


class Slicing:
    __slots__ = ("element", "rules", "ordered", "slices", "label", "names")

    def __init__(self, element: str, rules: str, ordered: bool, slices: list[Slice], label: str) -> None:
        self.element = element  # the sliced element's path, for messages
        self.rules = rules  # open | closed | openAtEnd
        self.ordered = ordered
        self.slices = slices
        self.label = label  # the profile
        self.names = ", ".join(s.name for s in slices)  # for messages

    def assign(self, items: list, walker: Any) -> list[int | None]:
        """The index of the first slice each item matches (None: no slice)."""
        out: list[int | None] = []
        for item in items:
            found = None
            if item is not None:
                for index, slice_ in enumerate(self.slices):
                    try:
                        if slice_.matches(item, walker):
                            found = index
                            break
                    except Exception:  # odd JSON shapes: that slice does not match
                        continue
            out.append(found)
        return out

    def _where(self) -> str:
        return f" (profile {self.label})" if self.label else ""

    def check_counts(self, assignment: list[int | None], items: list, path: str, issues: list[Issue]) -> None:
        counts = [0] * len(self.slices)
        for index in assignment:
            if index is not None:
                counts[index] += 1
        for slice_, count in zip(self.slices, counts):
            if count < slice_.min:
                issues.append(Issue("error", "required", f"slice '{slice_.name}' of {self.element} needs at least "
                                    f"{slice_.min} item(s), found {count}{self._where()}", path))
            elif slice_.max is not None and count > slice_.max:
                issues.append(Issue("error", "structure", f"slice '{slice_.name}' of {self.element} allows at most "
                                    f"{slice_.max} item(s), found {count}{self._where()}", path))
        names = self.names
        last = -1
        seen_unmatched = False
        for position, index in enumerate(assignment):
            if items[position] is None:
                continue
            if index is None:
                if self.rules == "closed":
                    issues.append(Issue("error", "structure", f"this item of {self.element} matches none of its "
                                        f"slices ({names}) and the slicing is closed{self._where()}",
                                        f"{path}[{position}]"))
                seen_unmatched = True
                continue
            if self.rules == "openAtEnd" and seen_unmatched:
                issues.append(Issue("error", "structure", f"slice '{self.slices[index].name}' item after an "
                                    f"item that matches no slice: {self.element} is sliced openAtEnd{self._where()}",
                                    f"{path}[{position}]"))
            if self.ordered and index < last:
                issues.append(Issue("error", "structure", f"slice '{self.slices[index].name}' item out of order: "
                                    f"the slices of {self.element} are ordered ({names}){self._where()}",
                                    f"{path}[{position}]"))
            last = max(last, index)


# -- compiling -----------------------------------------------------------------------------------

def parse_path(path: str) -> list[tuple[str, str | None]] | None:
    """Discriminator path -> [(name, argument)]: ("url", None), ("extension", "http://..."), ("ofType", "X")."""
    steps: list[tuple[str, str | None]] = []
    position = 0
    while position < len(path):
        match = STEP.match(path, position)
        if not match or match.end() == position:
            return None
        name, call = match.group(1), match.group(2)
        argument = None
        if call is not None:
            argument = call[1:-1].strip().strip("'")
            if name not in ("extension", "ofType", "resolve"):
                return None
        steps.append((name, argument))
        position = match.end()
        if position < len(path):
            if path[position] != ".":
                return None
            position += 1
    return steps


def compile_slicing(compiler: Any, view: View, element: dict, base_child: Child, model: str,
                    at_resource_root: bool) -> Slicing | None:
    eid = element_id(element)
    slicing = element.get("slicing") or {}
    discriminators = slicing.get("discriminator") or []
    name = element["path"].rpartition(".")[2]
    if not discriminators and name in ("extension", "modifierExtension"):
        discriminators = [{"type": "value", "path": "url"}]
    slices = []
    for slice_element in view.slices.get(eid, ()):
        compiled = [c for c in compiler._compile_element(view, slice_element, model, at_resource_root)
                    if c.max != 0 or len(slice_element.get("type") or []) <= 1]
        if not compiled:
            continue
        child = compiled[0]
        slice_name = slice_element.get("sliceName") or element_id(slice_element).rpartition(":")[2]
        child.slice_name = slice_name
        child.profile = view.url if view.sd.get("derivation") == "constraint" else ""
        matchers: list[Matcher] = []
        by_validation = not discriminators
        for discriminator in discriminators:
            matcher = _matcher(compiler, view, slice_element, discriminator)
            if matcher is None:
                by_validation = True
                compiler.notes.setdefault(f"{view.url}#{element_id(slice_element)}",
                                          f"{view.url}: slice {element_id(slice_element)} is matched by validating "
                                          f"against it (discriminator {discriminator.get('type')}:"
                                          f"{discriminator.get('path')} not evaluated)")
                break
            matchers.append(matcher)
        maximum = slice_element.get("max", "*")
        slices.append(Slice(slice_name, slice_element.get("min", 0) or 0,
                            None if maximum == "*" else int(maximum), child, matchers, by_validation))
    if not slices:
        return None
    label = view.url if view.sd.get("derivation") == "constraint" else ""
    return Slicing(element["path"], slicing.get("rules", "open"), bool(slicing.get("ordered")), slices, label)


def _definition_at(compiler: Any, view: View, element: dict, steps: list[tuple[str, str | None]]):
    """The definition at a discriminator path below ``element``: (view, element, inherited values).

    ``inherited`` is the list of values the path reaches inside a fixed/pattern value met on
    the way (a ``patternCodeableConcept`` above ``coding.system``), or None.
    """
    current_view, current = view, element
    inherited: list | None = None
    for index, (name, argument) in enumerate(steps):
        if name == "$this":
            continue
        if name == "resolve":
            return None
        if name == "ofType":
            continue
        value = _own_value(current)
        if value is not None and inherited is None:
            inherited = _navigate([value[1]], steps[index:])
        if name == "extension" and argument is not None:
            found = _extension_slice(compiler, current_view, current, argument)
            if found is None:
                return None
            current_view, current = found
            continue
        found = _child_definition(compiler, current_view, current, name)
        if found is None:
            return (current_view, None, inherited) if inherited is not None else None
        current_view, current = found
    return current_view, current, inherited


def _child_definition(compiler: Any, view: View, element: dict, name: str):
    eid = element_id(element)
    for candidate in (f"{eid}.{name}", f"{eid}.{name}[x]"):
        if candidate in view.by_id:
            return view, view.by_id[candidate]
    types = element.get("type") or []
    if len(types) != 1:
        return None
    type_ = types[0]
    target = None
    for profile in type_.get("profile") or ():
        target = compiler.source.url(profile)
        if target is not None:
            break
    if target is None:
        target = compiler.source.core(type_["code"])
    if target is None:
        return None
    target_view = compiler.view(target)
    root = target_view.root_id
    for candidate in (f"{root}.{name}", f"{root}.{name}[x]"):
        if candidate in target_view.by_id:
            return target_view, target_view.by_id[candidate]
    return None


def _extension_slice(compiler: Any, view: View, element: dict, url: str):
    """The slice of ``element.extension`` for extension ``url``."""
    eid = element_id(element) + ".extension"
    for candidate in view.slices.get(eid, ()):
        for type_ in candidate.get("type") or ():
            if url in (type_.get("profile") or ()):
                return view, candidate
        fixed = view.by_id.get(element_id(candidate) + ".url", {}).get("fixedUri")
        if fixed == url:
            return view, candidate
    return None


def _own_value(element: dict | None) -> tuple[str, Any] | None:
    if not element:
        return None
    for key, value in element.items():
        if key.startswith("fixed"):
            return "fixed", value
        if key.startswith("pattern"):
            return "pattern", value
    return None


def _matcher(compiler: Any, view: View, slice_element: dict, discriminator: dict) -> Matcher | None:
    kind = discriminator.get("type")
    steps = parse_path(discriminator.get("path") or "$this")
    if not steps or kind not in ("value", "pattern", "exists", "type", "profile"):
        return None
    found = _definition_at(compiler, view, slice_element, steps)
    if found is None:
        return None
    target_view, target, inherited = found
    if kind in ("value", "pattern"):
        own = _own_value(target)
        if own is not None:
            how, expected = own
            if how == "fixed":
                return lambda item, walker: any(same_value(v, expected) for v in _navigate([item], steps))
            return lambda item, walker: any(matches_pattern(v, expected) for v in _navigate([item], steps))
        if inherited:
            wanted = list(inherited)
            return lambda item, walker: any(matches_pattern(v, w) for v in _navigate([item], steps) for w in wanted)
        binding = (target or {}).get("binding") or {}
        if binding.get("strength") in ("required", "extensible", "preferred") and binding.get("valueSet") \
                and hasattr(compiler.terminology, "matcher"):
            # as the reference validator does: the slice's value set decides, whatever its strength
            belongs = compiler.terminology.matcher(binding["valueSet"])
            if belongs is not None:
                return lambda item, walker: any(belongs(v) for v in _navigate([item], steps))
        return None
    if target is None:
        return None
    if kind == "exists":
        if (target.get("min") or 0) >= 1:
            return lambda item, walker: bool(_navigate([item], steps))
        if target.get("max") == "0":
            return lambda item, walker: not _navigate([item], steps)
        return None
    types = target.get("type") or []
    if kind == "type":
        names = set()
        for type_ in types:
            names.add(type_["code"])
            for profile in type_.get("profile") or ():
                found_type = compiler.source.type_of(profile)
                if found_type:
                    names.add(found_type)
        if not names or "Resource" in names:
            return None
        last_step = steps[-1][0] if steps else "$this"
        return lambda item, walker: any(_type_of(v, last_step) in names for v in _navigate([item], steps))
    profiles = [p for type_ in types for p in (type_.get("profile") or ())]
    if not profiles:
        return None
    return lambda item, walker: any(walker.conforms(p, v) for v in _navigate([item], steps) for p in profiles)


def _type_of(value: Any, step: str) -> str | None:
    if isinstance(value, dict):
        return value.get("resourceType")
    return None


def _navigate(values: list, steps: list[tuple[str, str | None]]) -> list:
    """The values at a discriminator path in JSON (lists flattened)."""
    current = [v for v in values if v is not None]
    index = 0
    while index < len(steps):
        name, argument = steps[index]
        index += 1
        if name == "$this":
            continue
        if name == "resolve":
            return []
        if name == "ofType":
            continue
        out: list = []
        if name == "extension" and argument is not None:
            for value in current:
                if isinstance(value, dict):
                    for ext in value.get("extension") or ():
                        if isinstance(ext, dict) and ext.get("url") == argument:
                            out.append(ext)
            current = out
            continue
        type_name = None
        if index < len(steps) and steps[index][0] == "ofType":
            type_name = steps[index][1]
        for value in current:
            if not isinstance(value, dict):
                continue
            base = name[:-3] if name.endswith("[x]") else name
            if type_name:
                found = value.get(base + _cap(type_name))
            else:
                found = value.get(base)
                if found is None:
                    found = next((v for k, v in value.items() if k.startswith(base) and k[len(base):len(base) + 1]
                                  .isupper()), None)
            if isinstance(found, list):
                out.extend(f for f in found if f is not None)
            elif found is not None:
                out.append(found)
        current = out
    return current
