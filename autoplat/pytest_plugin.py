"""The autoplat pytest plugin: fixtures for testing a module, registered by installing autoplat.

Loaded through the ``pytest11`` entry point, so a module's tests need no conftest and no
pytest-asyncio: handlers run on an event loop the harness owns, and sync handlers are called
directly, as on a worker.

For a test file inside a module folder (a folder with a manifest.json, at any depth above the
test), the plugin puts the module's code root on ``sys.path`` before the file is imported, so
``from my_module.jobs import hello`` works, and the fixtures take the module's name, config
defaults, allowed hosts and declared services from its manifest.

Fixtures (one set per test, sharing the same in-memory services):

``autoplat_ctx``
    A :class:`~autoplat.testing.LocalContext`: call ``handler(autoplat_ctx)`` or
    ``autoplat_ctx.run(handler)``; read ``.logs``, ``.messages``, ``.emitted``.
``autoplat_context``
    Makes more contexts: ``autoplat_context("hourly-sync", config={...}, request=...)`` (with
    that job type's config defaults).
``autoplat_run_job``
    Runs a job type's steps: ``autoplat_run_job("hourly-sync", config={...})`` →
    :class:`~autoplat.testing.JobResult`.
``autoplat_services``
    The :class:`~autoplat.testing.MemoryServices`; its parts are also fixtures:
    ``autoplat_storage``, ``autoplat_state``, ``autoplat_notify`` (``.sent``), ``autoplat_events``
    (emitted events), ``autoplat_series``, ``autoplat_http`` (a :class:`~autoplat.testing.MockHttp`:
    ``.add(host, json=...)``).
``autoplat_module``
    The module folder the test lives in (``None`` outside one).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from autoplat.testing import JobResult, LocalContext, MemoryServices

_MODULE_OF: dict[Path, Path | None] = {}


def _module_above(path: Path) -> Path | None:
    """The nearest folder holding a manifest.json, from ``path``'s folder upwards."""
    folder = path if path.is_dir() else path.parent
    if folder in _MODULE_OF:
        return _MODULE_OF[folder]
    found: Path | None = None
    for candidate in (folder, *folder.parents):
        if (candidate / "manifest.json").is_file():
            found = candidate
            break
    _MODULE_OF[folder] = found
    return found


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> None:
    """Before a test file inside a module folder is imported, make the module's code importable."""
    if file_path.suffix != ".py" or not file_path.name.startswith("test"):
        return
    module_dir = _module_above(file_path)
    if module_dir is None:
        return
    from autoplat.testing import code_root

    try:
        root = str(code_root(module_dir))
    except (OSError, ValueError):
        return  # an unreadable manifest: the test says so when it uses the module
    if root not in sys.path:
        sys.path.insert(0, root)


@pytest.fixture
def autoplat_module(request: pytest.FixtureRequest) -> Path | None:
    """The module folder the test file lives in (nearest manifest.json above it), or ``None``."""
    return _module_above(Path(str(request.path)))


@pytest.fixture
def autoplat_services() -> MemoryServices:
    """In-memory storage, state, notifications, events and an HTTP mock, shared by the test's runs."""
    from autoplat.testing import MemoryServices, MockHttp

    return MemoryServices(http=MockHttp())


@pytest.fixture
def autoplat_storage(autoplat_services: MemoryServices) -> Any:
    return autoplat_services.storage


@pytest.fixture
def autoplat_state(autoplat_services: MemoryServices) -> Any:
    return autoplat_services.state


@pytest.fixture
def autoplat_notify(autoplat_services: MemoryServices) -> Any:
    """What ``ctx.notify`` sent, in ``.sent``."""
    return autoplat_services.notify


@pytest.fixture
def autoplat_events(autoplat_services: MemoryServices) -> list[dict[str, Any]]:
    """What ``ctx.emit`` published: ``[{"id", "name", "payload"}, ...]``."""
    return autoplat_services.events


@pytest.fixture
def autoplat_series(autoplat_services: MemoryServices) -> Any:
    """The in-memory ``ctx.series`` (it knows the series the module's manifest declares)."""
    return autoplat_services.series


@pytest.fixture
def autoplat_http(autoplat_services: MemoryServices) -> Any:
    """The :class:`~autoplat.testing.MockHttp` answering ``ctx.http``: ``.add(host, json=...)``."""
    return autoplat_services.http


@pytest.fixture
def autoplat_context(
    autoplat_module: Path | None, autoplat_services: MemoryServices
) -> Iterator[Callable[..., LocalContext]]:
    """Makes contexts: ``autoplat_context(job_type=None, *, config=, secrets=, request=, event=, previous=)``."""
    from autoplat.testing import LocalContext

    made: list[LocalContext] = []

    def make(job_type: str | None = None, **kwargs: Any) -> LocalContext:
        ctx = LocalContext.create(module_dir=autoplat_module, job_type=job_type, memory=autoplat_services, **kwargs)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


@pytest.fixture
def autoplat_ctx(autoplat_context: Callable[..., LocalContext]) -> LocalContext:
    """A context with in-memory services (the module's manifest decides what is declared)."""
    return autoplat_context()


@pytest.fixture
def autoplat_run_job(autoplat_module: Path | None, autoplat_services: MemoryServices) -> Callable[..., JobResult]:
    """Runs a job type of the test's module: ``autoplat_run_job("hello", config={...})``;
    ``module=`` names another module (folder or name)."""
    from autoplat.testing import run_job

    def run(job_type: str, *, module: str | Path | None = None, **kwargs: Any) -> JobResult:
        target = module if module is not None else autoplat_module
        if target is None:
            raise LookupError("this test is not inside a module folder: pass module= (a folder or a module name)")
        return run_job(target, job_type, memory=autoplat_services, **kwargs)

    return run
