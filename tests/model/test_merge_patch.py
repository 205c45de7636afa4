"""JSON Merge Patch, with the examples of RFC 7386 Appendix A."""
from __future__ import annotations

import pytest

from fhir_server.model.merge_patch import merge_patch

RFC_7386_APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("target, patch, result", RFC_7386_APPENDIX_A)
def test_rfc_7386_examples(target, patch, result):
    assert merge_patch(target, patch) == result


def test_the_target_is_left_unchanged():
    target = {"name": [{"family": "Dupont"}], "meta": {"versionId": "1"}}
    merge_patch(target, {"name": None, "meta": {"versionId": None}})
    assert target == {"name": [{"family": "Dupont"}], "meta": {"versionId": "1"}}
