"""The live execution log: the Redis channel workers publish each log entry on, and the merge of
what is already stored with what arrives live (used by ``GET /executions/{id}/logs/stream``).

Entries are published live while a step runs and stored on the execution when the step ends
(whatever its outcome), so a reader sees some entries twice: once live, once stored. The merge
drops the second copy of each, counting copies, so repeated identical lines are kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any


def log_channel(prefix: str, execution_id: str) -> str:
    return f"{prefix}:logs:{execution_id}"


def entry_key(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


class LogMerge:
    """Exactly-once delivery of stored + live entries of one execution."""

    def __init__(self) -> None:
        self._stored_seen = 0
        self._only_stored: Counter[str] = Counter()
        self._only_live: Counter[str] = Counter()

    def stored(self, entries: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        """The entries of the execution's stored log not delivered yet (``entries``: the whole log)."""
        fresh = entries[self._stored_seen :]
        self._stored_seen = len(entries)
        for entry in fresh:
            key = entry_key(entry)
            if self._only_live[key] > 0:
                self._only_live[key] -= 1
                continue
            self._only_stored[key] += 1
            yield entry

    def live(self, entry: dict[str, Any]) -> Iterable[dict[str, Any]]:
        key = entry_key(entry)
        if self._only_stored[key] > 0:
            self._only_stored[key] -= 1
            return
        self._only_live[key] += 1
        yield entry
