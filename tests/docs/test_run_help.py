"""``./run.sh --help`` answers at once, before anything is installed, and names every option of
``autoplat dev`` (the help is written out in run.sh so it needs no venv)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer.main

from autoplat.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_run_sh_help_needs_no_install_and_names_every_dev_option():
    # A Python that does not exist: any install step would fail, so a 0 exit means none ran.
    env = {**os.environ, "PYTHON": "/nonexistent/python3"}
    for flag in ("--help", "-h"):
        done = subprocess.run([str(ROOT / "run.sh"), flag], env=env, capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Usage: ./run.sh") and done.stderr == ""
    dev = typer.main.get_command(app).commands["dev"]  # type: ignore[attr-defined]
    options = {opt for param in dev.params for opt in (*param.opts, *param.secondary_opts)}
    assert {"--port", "--temporal-port", "--ui-port", "--no-example"} <= options
    missing = sorted(opt for opt in options if opt not in done.stdout)
    assert missing == [], f"run.sh --help does not name {missing}"
    for variable in (
        "TEMPORAL_HTTP_PORT",
        "TEMPORAL_METRICS_PORT",
        "AUTOPLAT_DEV_DEMO_PORT",
        "AUTOPLAT_DEV_METER_PORT",
    ):
        assert variable in done.stdout
