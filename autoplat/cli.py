"""The ``autoplat`` command line: run the platform, migrate, manage admins and modules.

Platform imports happen inside the commands, so ``autoplat module validate`` stays light.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="autoplat: automation platform on Temporal", no_args_is_help=True, add_completion=False)
module_app = typer.Typer(
    help="Module authoring, on a module folder: init, validate, register. "
    "(Operating registered modules: `autoplat modules`.)",
    no_args_is_help=True,
)
app.add_typer(module_app, name="module")


def _settings() -> Any:
    from registry.settings import InsecureSettings, Settings

    settings = Settings()
    try:
        settings.check_secure()
    except InsecureSettings as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    return settings


def _exit(code: int = 0) -> None:
    # temporalio sdk-python #300: a short-lived process can crash at interpreter exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def migrate(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Upgrade the registry database to ``revision`` (default: head)."""
    from registry.migrate import upgrade

    settings = _settings()
    asyncio.run(upgrade(settings.effective_database_url, revision))
    typer.echo(f"database at {revision}: {_redact(settings.effective_database_url)}")


@app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(help="Admin email")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    username: Annotated[str | None, typer.Option(help="Optional username")] = None,
) -> None:
    """Create an admin user (or promote and reset an existing one)."""
    from registry.db import create_engine, create_session_factory, unit_of_work
    from registry.errors import DomainError
    from registry.models import Role
    from registry.services import users

    settings = _settings()

    async def run() -> str:
        engine = create_engine(settings.effective_database_url)
        try:
            async with unit_of_work(create_session_factory(engine)) as session:
                existing = await users.find_by_login(session=session, login=email)
                if existing is not None:
                    await users.set_password(session=session, user=existing, password=password)
                    existing.role = Role.admin.value
                    existing.is_active = True
                    return "updated"
                await users.create_user(
                    session=session, email=email, password=password, role=Role.admin, username=username
                )
                return "created"
        finally:
            await engine.dispose()

    try:
        outcome = asyncio.run(run())
    except DomainError as exc:
        typer.secho(f"error: {exc.message}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"admin {email} {outcome}")


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate", help="Upgrade the DB first")] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="API processes sharing the port (each with its own pool and event dispatcher); "
            "about one per core serves reads fastest",
        ),
    ] = 1,
) -> None:
    """Serve the REST API."""
    import uvicorn

    from api.app import create_app
    from registry.logformat import logging_config

    settings = _settings()
    asyncio.run(_bootstrap(settings, migrate=migrate_first))
    if workers == 1:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="info",
            log_config=logging_config(settings.log_format),
            proxy_headers=False,
        )
        return
    # Several processes need an import string: each builds its app from the same environment.
    # Their metrics are shared through files, so a scrape of any one sees the sums of all
    # (docs/observability.md); a fresh folder per start, as prometheus-client requires. Only when
    # /metrics is served: every counted request then writes to a shared file (~15 % of the API's
    # event ingest on 2 cores, bench/events_throughput.py --api-workers 2).
    shared_metrics = None
    if settings.metrics_mode() != "off" and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        shared_metrics = tempfile.mkdtemp(prefix="autoplat-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared_metrics
    try:
        _serve_processes(uvicorn, workers, host, port, settings.log_format)
    finally:
        if shared_metrics is not None:
            import shutil

            shutil.rmtree(shared_metrics, ignore_errors=True)


def _serve_processes(uvicorn: Any, workers: int, host: str, port: int, log_format: str) -> None:
    from registry.logformat import logging_config

    uvicorn.run(
        "api.app:app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="info",
        log_config=logging_config(log_format),
        proxy_headers=False,
    )


@app.command()
def worker(
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Port of the worker's /metrics (0: none; default AUTOPLAT_WORKER_METRICS_PORT, 9464)"),
    ] = None,
) -> None:
    """Run a Temporal worker for every module job type (hot-pluggable)."""
    from workflows.worker import run_worker

    settings = _settings()
    if metrics_port is not None:
        settings.worker_metrics_port = metrics_port
    from registry.logformat import configure

    configure(settings.log_format)
    asyncio.run(run_worker(settings))
    _exit(0)


@app.command()
def reconcile() -> None:
    """Make Temporal schedules match the registry once and print what was fixed."""
    from workflows.reconcile import reconcile_once

    settings = _settings()
    report = asyncio.run(reconcile_once(settings))
    for line in report.lines() or ["nothing to fix"]:
        typer.echo(line)
    _exit(0)


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="API bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    temporal_port: Annotated[int, typer.Option(help="Temporal frontend port")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal Web UI port")] = 8233,
    example: Annotated[bool, typer.Option("--example/--no-example", help="Register the example module")] = True,
    consumption_demo: Annotated[
        bool,
        typer.Option(
            "--consumption-demo/--no-consumption-demo",
            help="Start the meter simulator and set the consumption monitor up to read it",
        ),
    ] = True,
) -> None:
    """Everything in one process tree: Temporal dev server, API and worker, embedded defaults."""
    from autoplat.devserver import run_dev

    os.environ.setdefault("AUTOPLAT_DEV_MODE", "true")
    code = asyncio.run(
        run_dev(
            host=host,
            port=port,
            temporal_port=temporal_port,
            ui_port=ui_port,
            example=example,
            consumption_demo=consumption_demo,
        )
    )
    _exit(code)


@module_app.command("init")
def module_init(
    name: Annotated[str, typer.Argument(help="Module name, kebab-case (e.g. my-module)")],
    directory: Annotated[Path | None, typer.Argument(help="Folder to write (default: ./NAME)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that is not empty")] = False,
) -> None:
    """Write a new module (manifest, a job type, a route, tests) that validates and passes its tests."""
    from autoplat.scaffold import ScaffoldError, init_module

    folder = directory if directory is not None else Path(name)
    try:
        files = init_module(name, folder, force=force)
    except ScaffoldError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    for path in files:
        typer.echo(f"  wrote {path}")
    typer.echo(f"\nnext: cd {folder} && autoplat module validate . && pytest   (docs/first-module.md)")


@module_app.command("validate")
def module_validate(
    path: Annotated[Path, typer.Argument(help="Module folder (with manifest.json) or manifest file")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Validate a module offline, with the same rules and messages as the API."""
    import json

    from registry.manifest import validate_manifest

    manifest_path = path / "manifest.json" if path.is_dir() else path
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        typer.secho(f"error: cannot read {manifest_path}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    report = validate_manifest(data, code_root=manifest_path.parent)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for issue in report.errors:
            typer.secho(f"error   {issue.path or '/'}  [{issue.code}] {issue.message}", fg="red")
        for issue in report.warnings:
            typer.secho(f"warning {issue.path or '/'}  [{issue.code}] {issue.message}", fg="yellow")
        typer.echo("valid" if report.valid else f"invalid: {len(report.errors)} error(s)")
    raise typer.Exit(0 if report.valid else 1)


@module_app.command("register")
def module_register(
    path: Annotated[Path, typer.Argument(help="Module folder (with manifest.json)")],
    api_url: Annotated[
        str | None,
        typer.Option(
            envvar="AUTOPLAT_API_URL", help="API base URL (default: your login's, else http://127.0.0.1:8000)"
        ),
    ] = None,
    token: Annotated[str | None, typer.Option(envvar="AUTOPLAT_TOKEN", help="Access token")] = None,
    user: Annotated[str | None, typer.Option(envvar="AUTOPLAT_USER", help="Login (if no token)")] = None,
    password: Annotated[str | None, typer.Option(envvar="AUTOPLAT_PASSWORD", help="Password (if no token)")] = None,
    upload: Annotated[bool, typer.Option("--upload/--path", help="Upload a bundle instead of a server path")] = False,
    install: Annotated[bool, typer.Option(help="Install after registering")] = True,
    enable: Annotated[bool, typer.Option(help="Enable after installing")] = False,
) -> None:
    """Register (and optionally install and enable) a module with a running API.

    Without --token or --user, the session of `autoplat login` is used."""
    from autoplat.client import register_module

    if token is None and user is None:
        from autoplat.cli_ops import Api, CliError

        try:
            session = Api.open(api_url)
            token, api_url = session._access_token(), session.base_url
        except CliError as exc:
            typer.secho(f"error: {exc.message}", fg="red", err=True)
            raise typer.Exit(exc.code) from exc
    try:
        result = register_module(
            path.resolve(),
            api_url=api_url or "http://127.0.0.1:8000",
            token=token,
            user=user,
            password=password,
            upload=upload,
            install=install,
            enable=enable,
        )
    except RuntimeError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{result['name']} {result['version']}: {result['status']}")


async def _bootstrap(settings: Any, *, migrate: bool) -> tuple[str, str | None] | None:
    """Migrate (optionally) and make sure an admin exists. Returns (email, generated password)."""
    from registry.db import create_engine, create_session_factory, unit_of_work
    from registry.migrate import upgrade
    from registry.services import users

    if migrate:
        await upgrade(settings.effective_database_url)
    engine = create_engine(settings.effective_database_url)
    try:
        async with unit_of_work(create_session_factory(engine)) as session:
            created = await users.ensure_admin(
                session=session,
                email=settings.admin_email,
                password=settings.admin_password.get_secret_value() if settings.admin_password else None,
                generate=settings.dev_mode,
            )
    finally:
        await engine.dispose()
    if created is None:
        return None
    user, generated = created
    if generated:
        typer.secho(
            f"\n  created admin {user.email} with password: {generated}\n  (shown once; change it with "
            "PUT /api/v1/auth/me/password)\n",
            fg="green",
        )
    return user.email, generated


def _redact(url: str) -> str:
    import re

    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


from autoplat.cli_ops import register as _register_operator_commands  # noqa: E402 - after the server commands

_register_operator_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
