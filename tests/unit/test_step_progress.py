"""A handler's ``ctx.heartbeat(*details)``: kept for the step's next beat, never able to break it."""

from __future__ import annotations

import threading
from typing import Any

from temporalio.converter import DataConverter

from activities.jobs import _Beat, _StepRuntime


def _runtime(beat: _Beat) -> _StepRuntime:
    return _StepRuntime(activities=None, inp=None, loop=None, beat=beat)  # type: ignore[arg-type]


def test_progress_rides_on_the_platforms_beat() -> None:
    beat = _Beat(run=1, started=1.0)
    _runtime(beat).heartbeat("page", 3, {"done": 30})
    details = beat.details()
    assert details[0]["autoplat_step_beat"] == 1 and details[1:] == ["page", 3, {"done": 30}]


def test_details_the_sdk_cannot_convert_are_kept_as_text() -> None:
    """An unconvertible detail would make every later beat of the step fail, and the SDK cancels an
    activity whose heartbeat fails: it is kept as its repr instead."""

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    beat = _Beat(run=1, started=1.0)
    runtime = _runtime(beat)
    done: list[Any] = []
    # From a handler's own thread, outside any activity context.
    thread = threading.Thread(target=lambda: done.append(runtime.heartbeat("page", Opaque())))
    thread.start()
    thread.join()
    assert done == [None] and beat.details()[1:] == ["page", "<opaque>"]
    DataConverter.default.payload_converter.to_payloads(beat.details())  # the beat converts
