"""The wildcard matching table: ``*`` one segment, ``**`` any number (including none)."""

from __future__ import annotations

import re

import pytest

from registry.manifest import event_pattern_matches
from registry.services.dispatch import apply_mapping, filter_matches
from registry.services.events import pattern_regex

TABLE = [
    ("data.synced", "data.synced", True),
    ("data.synced", "data.failed", False),
    ("data.*", "data.synced", True),
    ("data.*", "data", False),
    ("data.*", "data.a.b", False),
    ("data.**", "data", True),
    ("data.**", "data.synced", True),
    ("data.**", "data.a.b", True),
    ("data.**", "database.x", False),
    ("*.synced", "data.synced", True),
    ("*.synced", "synced", False),
    ("*.synced", "a.b.synced", False),
    ("**.synced", "synced", True),
    ("**.synced", "a.b.synced", True),
    ("**.synced", "a.b.synced.not", False),
    ("**", "anything.at.all", True),
    ("*", "one", True),
    ("*", "one.two", False),
    ("a.**.z", "a.z", True),
    ("a.**.z", "a.b.c.z", True),
    ("a.**.z", "a.b.c", False),
    ("a.*.*.d", "a.b.c.d", True),
    ("a.*.*.d", "a.b.d", False),
    ("job.**", "job.completed", True),
    ("data-x.*", "data-x.y_z", True),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), TABLE)
def test_matching_table(pattern: str, name: str, expected: bool) -> None:
    assert event_pattern_matches(pattern, name) is expected
    # The SQL filter of GET /events uses the same semantics.
    assert bool(re.match(pattern_regex(pattern), "." + name)) is expected


def test_payload_filter_and_mapping() -> None:
    payload = {"kind": "full", "data": {"table": "orders", "rows": [1, 2]}, "n": 0}
    assert filter_matches({"kind": "full", "data.table": "orders"}, payload)
    assert filter_matches(None, payload)
    assert not filter_matches({"kind": "delta"}, payload)
    assert not filter_matches({"missing": None}, payload)
    assert filter_matches({"n": 0, "data.rows.1": 2}, payload)
    assert apply_mapping({"table": "data.table", "absent": "nope.x"}, payload) == {"table": "orders"}
    assert apply_mapping({}, payload) is None
