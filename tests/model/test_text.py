"""Text normalisation used on both sides of string search."""
from __future__ import annotations

import pytest

from fhir_server.model.text import normalize


@pytest.mark.parametrize(("raw", "expected"), [
    ("Hélène", "helene"),
    ("HÉLÈNE", "helene"),
    ("Straße", "strasse"),
    ("  Jean   Pierre\t\nDUPONT  ", "jean pierre dupont"),
    ("François-Xavier", "francois-xavier"),
    ("Zoë Ångström", "zoe angstrom"),
    ("ﬁne", "fine"),  # NFKD compatibility decomposition of the ligature
    ("Ǆ", "dz"),  # casefold then decompose again
    ("", ""),
    ("   ", ""),
    ("abc", "abc"),
    ("Ünïcödé\u00a0space", "unicode space"),  # non-breaking space is whitespace
])
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_is_idempotent() -> None:
    for raw in ("Hélène Straße", "  A  b ", "Ωmega"):
        once = normalize(raw)
        assert normalize(once) == once


def test_prefix_match_after_normalisation() -> None:
    # the default string search is "starts with" on normalised text on both sides
    assert normalize("Hélène Dupont").startswith(normalize("HELE"))
