"""JSON Merge Patch (RFC 7386), the second PATCH format the server takes besides JSON Patch (RFC 6902).

Why: fhirpy, one of the clients researchers use, sends ``resource.patch(...)`` and ``save(fields=...)``
as a partial resource (``Content-Type: application/json``): an object whose members replace the
resource's, ``null`` removing one. R4 names JSON Patch, XML Patch and FHIRPath Patch; taking merge
patches too costs a dozen lines and lets those calls work.
"""
from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` merged in (RFC 7386 §2): objects merge member by member, ``None`` removes a
    member, anything else (arrays included) replaces. ``target`` is not modified."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
