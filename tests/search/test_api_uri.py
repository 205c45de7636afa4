"""Uri search through the REST API: exact match, :below and :above on path segments, :missing.

Procedure instantiates-uri: proc1 http://example.org/protocols/diabetes/v2,
proc2 http://example.org/protocols, proc3 http://example.org/protocolsX/other.
"""
from __future__ import annotations


import pytest

from search_api_data import ids

ROOT = "http://example.org/protocols"


@pytest.mark.parametrize("query, expected", [
    (f"instantiates-uri={ROOT}", {"proc2"}),
    (f"instantiates-uri={ROOT}/diabetes/v2", {"proc1"}),
    (f"instantiates-uri={ROOT}/diabetes", set()),
    (f"instantiates-uri:below={ROOT}", {"proc1", "proc2"}),  # not protocolsX
    (f"instantiates-uri:below={ROOT}/", {"proc1"}),
    (f"instantiates-uri:below={ROOT}/diabetes", {"proc1"}),
    (f"instantiates-uri:above={ROOT}/diabetes/v2/x", {"proc1", "proc2"}),
    (f"instantiates-uri:above={ROOT}/diabetes", {"proc2"}),
    (f"instantiates-uri:above={ROOT}", {"proc2"}),
    (f"instantiates-uri:above={ROOT}X/other/more", {"proc3"}),
    (f"instantiates-uri={ROOT},{ROOT}X/other", {"proc2", "proc3"}),
    ("instantiates-uri:missing=false", {"proc1", "proc2", "proc3"}),
    ("instantiates-uri:missing=true", set()),
])
def test_uri(dataset, query, expected):
    assert ids(dataset, "Procedure?" + query) == expected
