"""Snapshot generation: a differential-only StructureDefinition + its base's snapshot -> a snapshot.

What the profile validator needs from http://hl7.org/fhir/R4/profiling.html#snapshot,
for hand-written differentials:

- each differential element is merged into the base element with the same id
  (cardinality, types, fixed/pattern values, bindings, slicing, and *added* constraints);
- a differential element with a ``sliceName`` creates the slice: a copy of the sliced
  element (and of its children) placed after the element's existing slices, with min 0
  unless the differential says otherwise; a type slice of a choice (``value[x]:valueQuantity``)
  keeps only its type;
- a path that goes below an element the base does not expand (``identifier.system``,
  ``extension:foo.value[x]``) expands that element's type first: the children of the
  type's definition, or of its type profile when it names one (an extension definition,
  a data type profile), re-rooted under the element;
- elements without ``id`` get one from their path and the slices declared before them
  (path-based differentials); ``valueQuantity``-style names become type slices of
  ``value[x]``.

The result keeps each copied element's ``base`` (where the element was first defined),
which the compiler uses to find array-ness and removed choice types.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from fhir_server.validation.structure import _cap, element_id


class SnapshotError(ValueError):
    """The differential cannot be applied to its base (unknown element, unknown type...)."""


def generate_snapshot(sd: dict, base: dict, resolve: Callable[[str], dict | None],
                      core: Callable[[str], dict | None]) -> list[dict]:
    """The snapshot elements of ``sd`` (differential) on top of ``base`` (which has a snapshot).

    ``resolve(url)`` gives a definition with a snapshot by canonical URL (type profiles),
    ``core(name)`` a base type's definition.
    """
    return _Generator(sd, base, resolve, core).run()


class _Generator:
    def __init__(self, sd: dict, base: dict, resolve, core) -> None:
        self.sd = sd
        self.resolve = resolve
        self.core = core
        self.elements: list[dict] = []
        for element in base["snapshot"]["element"]:
            copied = copy.deepcopy(element)
            copied["id"] = element_id(copied)
            copied.setdefault("base", {"path": copied["path"], "min": copied.get("min", 0),
                                       "max": copied.get("max", "*")})
            self.elements.append(copied)
        self.context: dict[str, str] = {}  # path -> id prefix, for differentials without ids

    # -- lookup -----------------------------------------------------------------------------

    def _index(self, eid: str) -> int | None:
        for index, element in enumerate(self.elements):
            if element["id"] == eid:
                return index
        return None

    def _family_end(self, eid: str) -> int:
        """The position after the element ``eid``, its children and its slices."""
        start = self._index(eid)
        end = start + 1
        while end < len(self.elements):
            other = self.elements[end]["id"]
            if other.startswith(eid + ".") or other.startswith(eid + ":"):
                end += 1
            else:
                break
        return end

    # -- the differential -------------------------------------------------------------------

    def run(self) -> list[dict]:
        for element in (self.sd.get("differential") or {}).get("element", []):
            raw = self._id_of(element)
            eid = self._normalise(raw)
            index = self._index(eid)
            for _ in range(3):  # expanding a parent may reveal a choice, whose type slice then needs adding
                if index is not None:
                    break
                self._ensure(eid, element)
                eid = self._normalise(raw)
                index = self._index(eid)
            if index is None:
                raise SnapshotError(f"{self.sd.get('url')}: element {raw} is not in the base definition")
            self._merge(self.elements[index], element)
        return self.elements

    def _id_of(self, element: dict) -> str:
        path = element["path"]
        if element.get("id"):
            eid = element["id"]
        else:
            parts = path.split(".")
            eid = path
            for cut in range(len(parts) - 1, 0, -1):
                prefix = ".".join(parts[:cut])
                if prefix in self.context:
                    eid = self.context[prefix] + "." + ".".join(parts[cut:])
                    break
            if element.get("sliceName"):
                eid += ":" + element["sliceName"]
        for key in [k for k in self.context if k == path or k.startswith(path + ".")]:
            del self.context[key]
        self.context[path] = eid
        return eid

    def _normalise(self, eid: str) -> str:
        """``Observation.valueQuantity`` -> ``Observation.value[x]:valueQuantity`` when that is what exists."""
        segments = _split(eid)
        out: list[str] = []
        for segment in segments:
            name, colon, slice_name = segment.partition(":")
            candidate = ".".join(out + [segment])
            if self._index(candidate) is None and not name.endswith("[x]"):
                parent = ".".join(out)
                for element in self.elements:
                    ename = element["id"][len(parent) + 1:] if parent else element["id"]
                    if (element["id"].startswith(parent + ".") if parent else True) and ename.endswith("[x]") \
                            and "." not in ename and ":" not in ename:
                        stem = ename[:-3]
                        codes = [t["code"] for t in element.get("type") or ()]
                        if name.startswith(stem) and any(stem + _cap(c) == name for c in codes):
                            segment = f"{ename}:{name}" + (f"/{slice_name}" if colon else "")
                            break
            out.append(segment)
        return ".".join(out)

    def _ensure(self, eid: str, element: dict) -> None:
        head, _, last = eid.rpartition(".")
        name, colon, slice_name = last.partition(":")
        if colon:
            sliced = f"{head}.{name}" if head else name
            if self._index(sliced) is None:
                self._ensure(sliced, {})
            if self._index(sliced) is None:
                return
            self._add_slice(sliced, eid, slice_name, element)
            return
        if not head:
            return
        if self._index(head) is None:
            self._ensure(head, {})
        if self._index(head) is None:
            return
        self._expand(head)

    def _add_slice(self, sliced: str, eid: str, slice_name: str, element: dict) -> None:
        index = self._index(sliced)
        original = self.elements[index]
        family = [original]
        position = index + 1
        while position < len(self.elements) and self.elements[position]["id"].startswith(sliced + "."):
            family.append(self.elements[position])
            position += 1
        copies = []
        for member in family:
            copied = copy.deepcopy(member)
            copied["id"] = eid + member["id"][len(sliced):]
            copies.append(copied)
        first = copies[0]
        first.pop("slicing", None)
        first["sliceName"] = element.get("sliceName") or slice_name
        first["min"] = 0
        if sliced.endswith("[x]"):
            stem = sliced.rpartition(".")[2][:-3]
            kept = [t for t in first.get("type") or () if stem + _cap(t["code"]) == slice_name]
            if kept:
                first["type"] = kept
        end = self._family_end(sliced)
        self.elements[end:end] = copies

    def _expand(self, eid: str) -> None:
        """Insert the children of ``eid``'s type (or type profile) right after it."""
        index = self._index(eid)
        element = self.elements[index]
        if index + 1 < len(self.elements) and self.elements[index + 1]["id"].startswith(eid + "."):
            return  # already expanded
        if "contentReference" in element:
            target = element["contentReference"].partition("#")[2]
            source = [e for e in self.elements if e["id"].startswith(target + ".") and ":" not in e["id"]]
            root_id, root_path = target, target
        else:
            types = element.get("type") or []
            if len(types) != 1:
                raise SnapshotError(f"{self.sd.get('url')}: cannot go below {eid}: it has {len(types)} types "
                                    "(slice the choice by type first)")
            type_ = types[0]
            definition = None
            for profile in type_.get("profile") or ():
                definition = self.resolve(profile)
                if definition is not None:
                    break
            if definition is None:
                definition = self.core(type_["code"])
            if definition is None:
                raise SnapshotError(f"{self.sd.get('url')}: no definition for type {type_['code']} of {eid}")
            source = definition["snapshot"]["element"][1:]
            root = definition["snapshot"]["element"][0]
            root_id, root_path = element_id(root), root["path"]
        copies = []
        for member in source:
            copied = copy.deepcopy(member)
            member_id = element_id(member)
            copied["id"] = eid + member_id[len(root_id):]
            copied["path"] = element["path"] + member["path"][len(root_path):]
            copied.setdefault("base", {"path": member["path"], "min": member.get("min", 0),
                                       "max": member.get("max", "*")})
            copies.append(copied)
        self.elements[index + 1:index + 1] = copies

    @staticmethod
    def _merge(target: dict, change: dict) -> None:
        for key, value in change.items():
            if key in ("id", "path", "base"):
                continue
            if key == "constraint":
                known = {c.get("key") for c in target.get("constraint", [])}
                target["constraint"] = list(target.get("constraint", [])) + [
                    copy.deepcopy(c) for c in value if c.get("key") not in known]
            elif key.startswith(("fixed", "pattern")):
                for old in [k for k in target if k.startswith(("fixed", "pattern"))]:
                    del target[old]
                target[key] = copy.deepcopy(value)
            elif key == "binding" and isinstance(value, dict):
                target["binding"] = {**target.get("binding", {}), **copy.deepcopy(value)}
            else:
                target[key] = copy.deepcopy(value)


def _split(eid: str) -> list[str]:
    """Split an element id on the dots between elements (slice names have no dots in R4)."""
    return eid.split(".")


def has_snapshot(sd: dict) -> bool:
    return bool((sd.get("snapshot") or {}).get("element"))
