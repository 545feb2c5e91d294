"""``autoplat module init``: the module it writes validates and its tests pass as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoplat.testing import run_job

TIMEOUT = 120


def _autoplat(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoplat.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )


def test_init_writes_a_module_that_validates_and_passes_its_tests(tmp_path):
    result = _autoplat("module", "init", "hello-ops", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "hello-ops"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "README.md",
        "hello_ops/__init__.py",
        "hello_ops/jobs.py",
        "manifest.json",
        "tests/test_hello_ops.py",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [j["name"] for j in manifest["jobs"]] == ["hello"]
    assert [(r["method"], r["path"], r["job"]) for r in manifest["routes"]] == [("GET", "/hello", "hello")]

    validated = _autoplat("module", "validate", ".", cwd=folder)
    assert (validated.returncode, validated.stdout.strip()) == (0, "valid"), validated.stdout

    # The generated tests, run the way an author runs them: plain pytest in the module folder,
    # with nothing but the installed autoplat (its pytest plugin) — no conftest, no asyncio plugin.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout

    # The harness finds the module by its name from a folder above it, as docs/sdk.md says.
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        ran = run_job("hello-ops", "hello", config={"name": "docs"})
    finally:
        os.chdir(cwd)
    assert (ran.status, ran.result) == ("COMPLETED", {"message": "Hello, docs!"})

    # A folder that is not empty is refused (nothing written), unless --force.
    (folder / "manifest.json").write_text("{}")
    again = _autoplat("module", "init", "hello-ops", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().startswith("error: hello-ops is not empty") and "--force" in again.stderr
    assert (folder / "manifest.json").read_text() == "{}"
    forced = _autoplat("module", "init", "hello-ops", "hello-ops", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((folder / "manifest.json").read_text())["name"] == "hello-ops"

    bad = _autoplat("module", "init", "Bad_Name", cwd=tmp_path)
    assert bad.returncode == 2 and "kebab-case" in bad.stderr and not (tmp_path / "Bad_Name").exists()


@pytest.mark.parametrize(
    ("name", "why"),
    [("class", "keyword"), ("email", "standard library"), ("queue", "standard library"), ("autoplat", "importable")],
)
def test_init_refuses_names_whose_package_python_already_knows(tmp_path, name, why):
    """``json``, ``queue`` or ``autoplat`` as the package would shadow (or be shadowed by) what the
    handler imports; a keyword is no import name at all."""
    from autoplat.scaffold import ScaffoldError, init_module

    with pytest.raises(ScaffoldError, match=why):
        init_module(name, tmp_path / name)
    assert not (tmp_path / name).exists()
