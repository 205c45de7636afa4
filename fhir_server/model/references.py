"""Reference rewriting inside a resource tree (Bundle ``urn:uuid`` full URLs → server ids)."""
from __future__ import annotations

from typing import Any, Mapping


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
