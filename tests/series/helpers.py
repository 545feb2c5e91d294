"""Comparing series answers whatever answered them (rollups, points, the in-memory reference)."""

from __future__ import annotations

from typing import Any

import pytest


def flat(buckets: list[Any]) -> list[tuple[Any, ...]]:
    """Buckets as (ts, labels, field, aggregation, value) rows."""
    return [
        (b.ts, tuple(sorted(b.labels.items())), f, a, v)
        for b in buckets
        for f, aggs in sorted(b.values.items())
        for a, v in sorted(aggs.items())
    ]


def assert_same(ours: list[Any], expected: list[Any], what: Any = None) -> None:
    a, b = flat(ours), flat(expected)
    assert len(a) == len(b) > 0, (what, sorted(set(a) ^ set(b))[:6])
    assert [r[:4] for r in a] == [r[:4] for r in b], what
    assert [r[4] for r in a] == pytest.approx([r[4] for r in b], rel=1e-9, abs=1e-9), what
