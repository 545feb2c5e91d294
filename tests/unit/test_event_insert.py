"""POST /events stores its row with a prebuilt INSERT of the columns a new event sets: a column added
to ``events`` later must be set there too (the ORM's Python-side defaults do not apply to it)."""

from __future__ import annotations

from sqlalchemy import inspect

from registry.services import events


def test_a_new_event_sets_every_column_the_insert_writes() -> None:
    event = events._new_event(name="a.b", payload={"x": 1})
    given = set(inspect(event).dict)
    written = {c.key for c in events._ACCEPT_COLUMNS}
    assert written <= given, f"set these in _new_event: {sorted(written - given)}"
