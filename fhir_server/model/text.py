"""Text normalisation shared by string indexing and string search.

One function, used on both sides (index entries and query values), so that the default
FHIR string match ("starts with, ignoring case and accents") is a plain prefix test on
normalised text.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

__all__ = ["normalize"]


def _normalize_non_ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    # casefold can itself produce decomposable characters; fold, then decompose again
    folded = unicodedata.normalize("NFKD", stripped.casefold())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return " ".join(folded.split())


@lru_cache(maxsize=65536)
def normalize(text: str) -> str:
    """Case-fold, strip accents (NFKD, drop combining marks), collapse whitespace, trim.

    ``"  Hélène   DUPONT "`` -> ``"helene dupont"``; ``"Straße"`` -> ``"strasse"``.
    """
    if text.isascii():
        return " ".join(text.lower().split())
    return _normalize_non_ascii(text)
