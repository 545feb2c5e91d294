"""Ports for the servers tests start (one module: ``tests/conftest.py`` is imported twice, as
``conftest`` by pytest and as ``tests.conftest`` by tests, and a set kept there would be two)."""

from __future__ import annotations

import os

_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, for a server a test starts. Picked below the kernel's ephemeral range
    (32768+, where bind(0) and outgoing connections take theirs), in a slice of its own per
    pytest-xdist worker, never twice in a session: two test processes never race for one port."""
    import random
    import socket

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    span = 12000 // workers
    low = 20000 + index * span
    for _ in range(200):
        port = random.randrange(low, low + span)
        if port in _PORTS_HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{low + span}")
