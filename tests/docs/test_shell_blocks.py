"""Every ```bash / ```sh block of README.md and docs/ is checked, so the docs cannot drift again.

- **Each block parses** (``bash -n``), and every API address it names (``localhost:8000/...``)
  is a route of the API (the OpenAPI document, or a module route, the console, ``/docs``).
- **Blocks that only talk to the API** (their commands are all from :data:`SAFE`: curl and small
  text tools) **run against a live stack**: a real API with a worker and the example module
  enabled, the block's ``localhost:8000`` pointed at it, ``$TOKEN`` / ``$ACCESS`` an admin's token,
  ``$AUTOPLAT_PASSWORD`` / ``$PASSWORD`` the admin's password, a CLI session saved by ``autoplat
  login``. A block fails when bash fails (``-e -o pipefail``: curl errors, a missing file, bad JSON
  fed to ``python3``) or the API answers a 5xx. 4xx answers are allowed: docs show placeholders.
- Every other block is **parse-only, with its reason in its test id** (``…-parse-only-autoplat``):
  nothing is skipped silently. New docs need nothing here; a new runnable block runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Commands a runnable block may use: they only talk to the API or transform text.
SAFE = frozenset({"curl", "printf", "echo", "date", "openssl", "sed", "python3", "jq", "tar", "export", "cat"})
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
_API = re.compile(r"(?:localhost|127\.0\.0\.1):8000(/[^\s\"'\\)<>?#]*)?")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SEPARATORS = {";", "|", "||", "&&", "&", "(", ")", ";;", "|&"}


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    lang: str
    text: str

    @property
    def commands(self) -> list[str]:
        """The first word of every simple command (assignments and ``$(`` followed)."""
        found: list[str] = []
        for logical in self.text.replace("\\\n", " ").splitlines():
            if not logical.strip() or logical.lstrip().startswith("#"):
                continue
            lexer = shlex.shlex(logical, posix=True, punctuation_chars=";|&()")
            lexer.commenters = "#"
            lexer.whitespace_split = True
            try:
                tokens = list(lexer)
            except ValueError:  # unbalanced quotes over lines: not something to run
                return ["<unparsable>"]
            expect = True
            for token in tokens:
                if token in _SEPARATORS:
                    expect = True
                elif expect and (_ASSIGNMENT.match(token) or token in ("$", "!")):
                    continue
                elif expect:
                    found.append(token)
                    expect = False
        return found

    @property
    def mode(self) -> str:
        """``run``, or ``parse-only-<why>``."""
        if not _API.search(self.text):
            return "parse-only-no-api-call"
        unsafe = sorted({Path(c).name for c in self.commands} - SAFE)
        if unsafe:
            return "parse-only-" + "-".join(unsafe)[:40]
        return "run"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}-{self.mode}"


def blocks() -> list[Block]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = []
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            match = _FENCE.match(lines[i])
            if not match:
                i += 1
                continue
            indent, fence, lang = match.groups()
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence):
                end += 1
            if lang in ("bash", "sh", "shell"):
                body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]]
                found.append(Block(str(path.relative_to(ROOT)), i + 1, lang, "\n".join(body) + "\n"))
            i = end + 1
    return found


BLOCKS = blocks()


def _route_patterns() -> list[re.Pattern[str]]:
    from api.app import create_app
    from registry.settings import Settings

    app = create_app(Settings(dev_mode=True, jwt_secret="docs-test-" + uuid.uuid4().hex))
    templates = [*app.openapi()["paths"], "/", "/docs", "/redoc", "/api/v1/m/{module}/{path}"]
    patterns = []
    for template in templates:
        regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if template.endswith("{path}"):
            regex = regex[: -len("[^/]+")] + ".+"
        patterns.append(re.compile(f"^{regex}/?$"))
    return patterns


@pytest.fixture(scope="module")
def routes() -> list[re.Pattern[str]]:
    return _route_patterns()


def test_the_docs_have_shell_blocks_and_some_run():
    assert len(BLOCKS) >= 20, [str(b) for b in BLOCKS]
    assert sum(b.mode == "run" for b in BLOCKS) >= 6, [str(b) for b in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_shell_block_parses_and_names_real_routes(block: Block, routes: list[re.Pattern[str]]) -> None:
    checked = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=10)
    assert checked.returncode == 0, f"{block.file}:{block.line} does not parse:\n{checked.stderr}\n{block.text}"
    for match in _API.finditer(block.text):
        path = match.group(1) or "/"
        assert any(p.match(path) for p in routes), f"{block.file}:{block.line} names {path}: no such route"


# --- the runnable blocks, against a live stack -------------------------------------------------------

PREAMBLE = """
curl() { command curl -w '%{stderr}\\nHTTP_STATUS %{http_code}\\n' "$@"; }
"""


async def _run(block: Block, base: str, admin: str, env: dict[str, str], cwd: Path) -> tuple[int, str, list[int]]:
    """Run a block against ``base`` as ``admin`` (the docs' ``admin@autoplat.local``)."""
    host = base.removeprefix("http://")
    script = re.sub(r"(?:localhost|127\.0\.0\.1):8000", host, block.text).replace("admin@autoplat.local", admin)
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-e",
        "-o",
        "pipefail",
        "-c",
        PREAMBLE + script,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    statuses = [int(code) for code in re.findall(r"HTTP_STATUS (\d+)", err.decode())]
    return proc.returncode or 0, (out + err).decode(errors="replace")[-2000:], statuses


async def test_api_blocks_run_against_a_live_stack(temporal_settings, worker, server, make_user, login, tmp_path):
    import httpx

    password = "docs-" + uuid.uuid4().hex
    admin = await make_user("admin", password=password)
    token = (await login(admin.email, password=password))["access_token"]
    async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        r = await http.post("/api/v1/modules", json={"path": str(ROOT / "example_modules" / "data_sync")})
        assert r.status_code == 201, r.text
        for action in ("install", "enable"):
            r = await http.post(f"/api/v1/modules/data-sync/{action}")
            assert r.status_code == 200, r.text
        run = (await http.get("/api/v1/executions", params={"limit": 1})).json()["items"]

    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "example_modules").symlink_to(ROOT / "example_modules")
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TOKEN": token,
        "ACCESS": token,
        "AUTOPLAT_PASSWORD": password,
        "PASSWORD": password,
        "SECRET": uuid.uuid4().hex,
        "ID": run[0]["id"] if run else str(uuid.uuid4()),
    }
    # The session `autoplat login` keeps, for blocks that read it (docs/first-module.md).
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "autoplat"),
        "login",
        "--api",
        server,
        "--login",
        admin.email,
        "--password-stdin",
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(password.encode() + b"\n"), timeout=60)
    assert proc.returncode == 0, out.decode()

    failures = []
    ran = 0
    for block in BLOCKS:
        if block.mode != "run":
            continue
        ran += 1
        code, output, statuses = await _run(block, server, admin.email, env, cwd)
        if code != 0 or not statuses or any(s == 0 or s >= 500 for s in statuses):
            failures.append(
                f"{block.file}:{block.line}: exit {code}, HTTP {statuses}\n{block.text}\n--- output\n{output}"
            )
    assert ran >= 6
    assert failures == [], "\n\n".join(failures)
