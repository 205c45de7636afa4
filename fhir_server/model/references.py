"""Reference rewriting inside a resource tree (Bundle ``urn:uuid`` full URLs → server ids)."""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

_LOCAL = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def rewrite_references(node: Any, mapping: Mapping[str, str]) -> Any:
    """Replace every ``reference`` (and ``Attachment.url``-free) value found in ``mapping``, in place.

    Walks the whole tree, so references in extensions and contained resources are
    rewritten too. Returns the node for convenience.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in mapping:
                node[key] = mapping[value]
            elif isinstance(value, (dict, list)):
                rewrite_references(value, mapping)
    elif isinstance(node, list):
        for item in node:
            rewrite_references(item, mapping)
    return node


def literal_references(node: Any) -> Iterator[tuple[str, str]]:
    """(type, id) of every literal ``Type/id`` reference in a resource tree (relative or absolute;
    ``#contained`` and ``urn:`` references are skipped). A plain walk: no search-index work."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                match = _LOCAL.match(value)
                if match and not value.startswith(("#", "urn:")):
                    yield match.group(1), match.group(2)
            elif isinstance(value, (dict, list)):
                yield from literal_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from literal_references(item)
