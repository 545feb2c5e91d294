"""Test ports are handed out once per session, whichever name the conftest was imported under."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_both_imports_of_the_conftest_share_one_port_ledger(request: pytest.FixtureRequest):
    import tests.conftest

    # pytest's own import of tests/conftest.py (as "conftest", a module apart from "tests.conftest").
    mine = Path(tests.conftest.__file__).resolve()
    (pytest_conftest,) = [
        p
        for p in request.config.pluginmanager.get_plugins()
        if getattr(p, "__file__", None) and Path(p.__file__).resolve() == mine
    ]
    assert pytest_conftest is not tests.conftest  # two module objects: the reason for tests/ports.py
    assert pytest_conftest.free_port is tests.conftest.free_port  # one ledger of ports handed out
    handed = {pytest_conftest.free_port() for _ in range(40)} | {tests.conftest.free_port() for _ in range(40)}
    assert len(handed) == 80
