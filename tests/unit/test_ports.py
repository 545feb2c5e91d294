"""Test ports are handed out once per session, whichever name the conftest was imported under."""

from __future__ import annotations

import sys


def test_both_imports_of_the_conftest_share_one_port_ledger():
    import tests.conftest

    # pytest's own import of tests/conftest.py, under the name "conftest".
    pytest_conftest = next(
        m for name, m in sys.modules.items() if name == "conftest" and m.__file__ == tests.conftest.__file__
    )
    assert pytest_conftest is not tests.conftest  # two module objects: the reason for tests/ports.py
    assert pytest_conftest.free_port is tests.conftest.free_port  # one ledger of ports handed out
    handed = {pytest_conftest.free_port() for _ in range(40)} | {tests.conftest.free_port() for _ in range(40)}
    assert len(handed) == 80
