"""``autoplat module init``: a new module folder that validates and whose tests pass as written.

The files are templates here (not package data), so the wheel needs nothing extra and a test can
check that what is written stays valid.
"""

from __future__ import annotations

import importlib.util
import json
import keyword
import re
import sys
from pathlib import Path
from string import Template

__all__ = ["NAME_PATTERN", "ScaffoldError", "init_module"]

#: The manifest's module name rule (registry/manifest/schema.json): kebab-case, 3-50 characters.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(Exception):
    """The module cannot be written (bad name, folder not empty)."""


def _manifest(name: str, package: str) -> dict[str, object]:
    return {
        "name": name,
        "version": "0.1.0",
        "displayName": name.replace("-", " ").capitalize(),
        "description": f"{name}: greets someone on a schedule and over HTTP (made by autoplat module init).",
        "author": "you <you@example.com>",
        "permissions": {"services": ["events", "notify"]},
        "config": {
            "type": "object",
            "properties": {
                "notify_email": {
                    "type": "string",
                    "format": "email",
                    "description": "Who hears about each greeting (unset: nobody)",
                }
            },
        },
        "events": {"emits": [{"name": f"{name}.greeted", "description": "Someone was greeted; payload: name."}]},
        "jobs": [
            {
                "name": "hello",
                "displayName": "Hello",
                "description": "Greet someone: ?name= on the route, else the job's config.",
                "handler": f"{package}.jobs:hello",
                "schedule": {"cron": "0 9 * * *", "timezone": "UTC"},
                "timeoutSeconds": 30,
                "config": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "description": "Who to greet", "default": "world"},
                        "greeting": {"type": "string", "description": "How", "default": "Hello"},
                    },
                },
            }
        ],
        "routes": [
            {
                "method": "GET",
                "path": "/hello",
                "job": "hello",
                "querySchema": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100}},
                    "additionalProperties": False,
                },
            }
        ],
    }


JOBS = Template('''"""Handlers of $name. Module code imports only ``autoplat``."""

from __future__ import annotations

from typing import Any

from autoplat import JobContext, JobError


def hello(ctx: JobContext) -> dict[str, Any]:
    """Greet ``?name=`` (on the route ``GET /api/v1/m/$name/hello``), else the job's ``name``."""
    query = ctx.request.query if ctx.request else {}
    name = query.get("name") or ctx.config["name"]
    if not name.strip():
        raise JobError("name must not be blank")  # a business failure: no retry
    message = f"{ctx.config['greeting']}, {name}!"
    ctx.logger.info("greeting %s", name)
    ctx.emit_sync("$name.greeted", {"name": name})
    if ctx.module_config.get("notify_email"):
        ctx.notify.email(ctx.module_config["notify_email"], f"$name: {message}", message)
    return {"message": message}
''')

TESTS = Template('''"""Tests of $name. Run them with `pytest` in the module folder: the autoplat pytest plugin
(installed with autoplat) provides the fixtures and puts the module's code on sys.path."""

from autoplat import HttpRequest
from $package.jobs import hello


def test_hello_greets_the_configured_name(autoplat_ctx):
    autoplat_ctx.config.update(name="ops", greeting="Hi")
    assert hello(autoplat_ctx) == {"message": "Hi, ops!"}
    assert autoplat_ctx.messages == ["greeting ops"]
    assert [(e["name"], e["payload"]) for e in autoplat_ctx.emitted] == [("$name.greeted", {"name": "ops"})]


def test_route_greets_the_query_name_and_notifies(autoplat_context, autoplat_notify):
    ctx = autoplat_context(
        "hello",  # the job type: its config defaults apply
        module_config={"notify_email": "team@example.com"},
        request=HttpRequest(method="GET", path="/hello", query={"name": "you"}),
    )
    assert ctx.run(hello) == {"message": "Hello, you!"}
    assert [(n["type"], n["to"]) for n in autoplat_notify.sent] == [("email", ["team@example.com"])]


def test_job_type_runs_with_the_manifest_defaults(autoplat_run_job):
    result = autoplat_run_job("hello")
    assert result.status == "COMPLETED", result.error
    assert result.result == {"message": "Hello, world!"}

    blank = autoplat_run_job("hello", config={"name": " "})
    assert blank.status == "FAILED" and str(blank.error) == "name must not be blank"
''')

README = Template("""# $name

Made by `autoplat module init`. See docs/first-module.md of autoplat for the whole tour.

```bash
autoplat module validate .          # the manifest, offline
pytest                              # the tests, with in-memory services
autoplat module register . --upload --enable   # on a running platform (after autoplat login)
```
""")


def _taken(package: str) -> str | None:
    """Why ``package`` cannot be the module's Python package, or None: a keyword is no import name,
    and a name Python already resolves (``json``, ``queue``, ``autoplat``, an installed package)
    would shadow it, or be shadowed, when the handler is imported."""
    if keyword.iskeyword(package) or keyword.issoftkeyword(package):
        return "is a Python keyword"
    if package in sys.stdlib_module_names or package in sys.builtin_module_names:
        return "is a module of Python's standard library"
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    return "is already importable here (an installed package)" if found is not None else None


def init_module(name: str, folder: Path, *, force: bool = False) -> list[Path]:
    """Write a new module named ``name`` into ``folder``; returns the files written.

    Raises:
        ScaffoldError: ``name`` is not a valid module name, or ``folder`` is not empty (unless ``force``).
    """
    if not (3 <= len(name) <= 50 and NAME_PATTERN.match(name)):
        raise ScaffoldError(f"{name!r} is not a module name: kebab-case, 3-50 characters, e.g. my-module")
    if folder.exists() and not folder.is_dir():
        raise ScaffoldError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ScaffoldError(f"{folder} is not empty: choose another folder, or --force to write into it anyway")
    package = name.replace("-", "_")
    taken = _taken(package)
    if taken:
        raise ScaffoldError(f"{name!r} cannot name a module: its package {package!r} {taken}; choose another name")
    files = {
        folder / "manifest.json": json.dumps(_manifest(name, package), indent=2) + "\n",
        folder / package / "__init__.py": f'"""The {name} module."""\n',
        folder / package / "jobs.py": JOBS.substitute(name=name),
        folder / "tests" / f"test_{package}.py": TESTS.substitute(name=name, package=package),
        folder / "README.md": README.substitute(name=name),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
