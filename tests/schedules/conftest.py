"""Fixtures of the schedule tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.jobs.helpers import put_module, write_module
from tests.schedules.helpers import CODE, JOBS


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    settings.min_schedule_interval_seconds = 1  # these tests run every-second crons
    return await put_module(sessions, settings.state_dir, write_module(tmp_path, name="slots", code=CODE, jobs=JOBS))
