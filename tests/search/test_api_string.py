"""String search through the REST API (R4 search.html "string"): starts-with ignoring case and
accents by default, ``:exact``, ``:contains``, ``:missing``; OR by commas, AND by repetition."""
from __future__ import annotations


import pytest

from search_api_data import ids


@pytest.mark.parametrize("query, expected", [
    ("Patient?name=mart", {"p1", "p3"}),  # Martin, Martinez; not Lemartin (starts-with)
    ("Patient?name=MART", {"p1", "p3"}),
    ("Patient?name=muller", {"p2"}),  # Müller: accents ignored
    ("Patient?name=MÜLL", {"p2"}),
    ("Patient?name=elise", {"p1"}),  # second given name Élise
    ("Patient?given=jerome", {"p2"}),
    ("Patient?family=jerome", set()),  # a given name, not a family name
    ("Patient?family=martin", {"p1", "p3"}),
    ("Patient?name=martinez", {"p3"}),
    ("Patient?name=nobody", set()),
    ("Patient?address-city=par", {"p1"}),
    ("Patient?address=12%20RUE", {"p1"}),  # an address line
    ("Organization?name=clinique%20saint-etienne", {"org1"}),
    ("Organization?name=hopital", {"org2"}),
])
def test_default_string_match_is_starts_with_ignoring_case_and_accents(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    ("Patient?family:exact=Martin", {"p1"}),
    ("Patient?family:exact=martin", set()),  # case matters
    ("Patient?family:exact=Muller", set()),  # accents matter
    ("Patient?family:exact=Müller", {"p2"}),
    ("Patient?family:exact=Mart", set()),  # whole value only
])
def test_exact_matches_the_whole_value_case_and_accent_sensitively(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    ("Patient?family:contains=artin", {"p1", "p3", "p4"}),
    ("Patient?family:contains=ARTI", {"p1", "p3", "p4"}),
    ("Patient?name:contains=ller", {"p2"}),
    ("Patient?name:contains=%25", set()),  # a literal %, not a wildcard
    ("Patient?name:contains=_", set()),  # a literal _, not a wildcard
])
def test_contains_matches_anywhere_in_the_value(dataset, query, expected):
    assert ids(dataset, query) == expected


def test_or_by_comma_and_and_by_repetition(dataset):
    assert ids(dataset, "Patient?family=muller,lemartin") == {"p2", "p4"}
    assert ids(dataset, "Patient?name=martin&name=claire") == {"p1"}
    assert ids(dataset, "Patient?name=martin&name=ana") == {"p3"}
    assert ids(dataset, "Patient?name=martin&name=jerome") == set()


def test_escaped_comma_is_part_of_the_value(dataset):
    assert ids(dataset, r"Patient?family=martin\,x") == set()


@pytest.mark.parametrize("query, expected", [
    ("Patient?address-city:missing=true", {"p3", "p4"}),
    ("Patient?address-city:missing=false", {"p1", "p2"}),
    ("Organization?name:missing=false", {"org1", "org2"}),
])
def test_missing(dataset, query, expected):
    assert ids(dataset, query) == expected
