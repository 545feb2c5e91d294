"""The console's build and its typed API client: size budget, and no drift from the API's OpenAPI."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.console.conftest import ROOT

INITIAL_JS_BUDGET = 300 * 1024
WEB_API = ROOT / "web" / "src" / "api"


def test_initial_javascript_is_within_budget(console_built: Path) -> None:
    """What the first page load executes (index.html's script and its module preloads), gzipped."""
    html = (console_built / "index.html").read_text()
    scripts = re.findall(r'<script[^>]+src="(/assets/[^"]+\.js)"', html)
    preloads = re.findall(r'<link rel="modulepreload"[^>]+href="(/assets/[^"]+\.js)"', html)
    files = sorted(set(scripts + preloads))
    assert scripts, html
    size = sum(len(gzip.compress((console_built / f.lstrip("/")).read_bytes(), 9)) for f in files)
    assert size <= INITIAL_JS_BUDGET, f"initial JS is {size / 1024:.1f} kB gzipped: {files}"
    # The pages are split off: the form library and the chart library are not in the first load.
    first = "".join((console_built / f.lstrip("/")).read_text() for f in files)
    assert "uPlot" not in first and "ajv" not in first.lower()


def test_checked_in_openapi_matches_the_api() -> None:
    from scripts.console_openapi import openapi

    checked_in = json.loads((WEB_API / "openapi.json").read_text())
    assert checked_in == openapi(), "the API changed: run scripts/console-types.sh and commit web/src/api/"


def test_checked_in_types_match_the_checked_in_openapi(tmp_path: Path) -> None:
    tool = ROOT / "web" / "node_modules" / ".bin" / "openapi-typescript"
    assert tool.exists() and shutil.which("node"), "the console's tools are missing: scripts/console-build.sh"
    out = tmp_path / "schema.d.ts"
    subprocess.run(
        [str(tool), str(WEB_API / "openapi.json"), "-o", str(out), "--alphabetize"],
        check=True,
        capture_output=True,
        cwd=ROOT / "web",
    )
    assert out.read_text() == (WEB_API / "schema.d.ts").read_text(), "run scripts/console-types.sh"


def test_the_wheel_ships_the_console(console_built: Any) -> None:
    """pyproject's package data includes the build: pip users need no Node."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "console_dist/**/*" in data["tool"]["setuptools"]["package-data"]["api"]
