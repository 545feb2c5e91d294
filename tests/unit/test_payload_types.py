"""The dataclasses Temporal decodes on every run carry resolved annotations (see activities/types.py)."""

from __future__ import annotations

import dataclasses

from activities import types


def test_every_payload_dataclass_has_its_annotations_resolved() -> None:
    classes = [
        v
        for v in vars(types).values()
        if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == types.__name__
    ]
    assert {c.__name__ for c in classes} >= {"JobInput", "RunPlan", "StepInput", "StepEnd"}
    for cls in classes:
        strings = {k: v for k, v in cls.__annotations__.items() if isinstance(v, str)}
        assert not strings, f"{cls.__name__} keeps string annotations: {strings}"
    assert types.JobInput.__annotations__["plan"] == types.RunPlan | None
