"""The module registry: registration, the lifecycle state machine, upgrades and configuration.

Lifecycle (docs/modules.md has the diagram)::

    REGISTERED --install--> INSTALLED --enable--> ENABLED --disable--> DISABLED --enable--> ENABLED
    INSTALLED / DISABLED / FAILED --uninstall--> REGISTERED
    REGISTERED / FAILED --delete--> (gone)
    REGISTERED / FAILED --install--> FAILED when a handler cannot be imported

:data:`TRANSITIONS` is the single source of truth; anything else raises ``InvalidTransition``.
Every transition locks the module row, checks the state inside the transaction, bumps
``Module.revision``, writes an audit row and a platform event (``module.<past tense>``) and calls
the lifecycle hook, all in the caller's transaction: a failure anywhere (a hook included) rolls
the whole transition back. Services never commit; the request's unit of work does.

The one exception to "an error rolls back" is a failed install: the module must stay FAILED
with its reason. :func:`install_module` therefore *returns* the failure (:class:`InstallOutcome`)
instead of raising, and the API answers 422 while the unit of work commits.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import json
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry import codestore
from registry.crypto import DecryptionFailed, decrypt_json, encrypt_json
from registry.db import unit_of_work
from registry.errors import Conflict, InvalidInput, InvalidManifest, InvalidTransition, NotFound, PayloadTooLarge
from registry.manifest import (
    MASK,
    apply_config_defaults,
    mask_secrets,
    parse_range,
    parse_version,
    secret_fields,
    validate_config,
    validate_manifest,
)
from registry.models import Job, Module, ModuleStatus, ModuleVersion, new_id
from registry.services import audit, events, module_alerts
from registry.services import jobs as job_service
from registry.services.common import Actor, Page, escape_like, paginate
from registry.services.lifecycle import LifecycleHooks
from registry.settings import Settings

__all__ = [
    "TRANSITIONS",
    "Action",
    "CodeSource",
    "InstallCheckFailed",
    "InstallOutcome",
    "allowed_actions",
    "check_handlers",
    "config_schema",
    "delete_module",
    "disable_module",
    "enable_module",
    "ensure_module_from_path",
    "get_module",
    "install_module",
    "job_types",
    "list_modules",
    "list_versions",
    "public_config",
    "register_module",
    "resolved_config",
    "uninstall_module",
    "update_config",
    "upgrade_module",
]

#: How long the import check of an install may take.
INSTALL_TIMEOUT_SECONDS = 60.0
#: Largest manifest accepted (manifest.json, or one given with a server path).
MAX_MANIFEST_BYTES = 256 * 1024
#: Longest status_reason kept (the tail of an import error can be long).
_MAX_REASON = 2000
_EVENT_SOURCE = "platform"

S = ModuleStatus


class Action(enum.StrEnum):
    install = "install"
    enable = "enable"
    disable = "disable"
    uninstall = "uninstall"
    delete = "delete"
    upgrade = "upgrade"


#: (state, action) -> state after the action; None means the module is gone.
#: ``install`` ends in FAILED instead of INSTALLED when the import check fails. ``upgrade`` keeps
#: the state, except that FAILED goes back to REGISTERED: the failure was about the old code.
TRANSITIONS: dict[tuple[ModuleStatus, Action], ModuleStatus | None] = {
    (S.REGISTERED, Action.install): S.INSTALLED,
    (S.FAILED, Action.install): S.INSTALLED,
    (S.INSTALLED, Action.enable): S.ENABLED,
    (S.DISABLED, Action.enable): S.ENABLED,
    (S.ENABLED, Action.disable): S.DISABLED,
    (S.INSTALLED, Action.uninstall): S.REGISTERED,
    (S.DISABLED, Action.uninstall): S.REGISTERED,
    (S.FAILED, Action.uninstall): S.REGISTERED,
    (S.REGISTERED, Action.delete): None,
    (S.FAILED, Action.delete): None,
    (S.REGISTERED, Action.upgrade): S.REGISTERED,
    (S.INSTALLED, Action.upgrade): S.INSTALLED,
    (S.ENABLED, Action.upgrade): S.ENABLED,
    (S.DISABLED, Action.upgrade): S.DISABLED,
    (S.FAILED, Action.upgrade): S.REGISTERED,
}
#: States whose code has passed the import check.
INSTALLED_STATES = frozenset({S.INSTALLED, S.ENABLED, S.DISABLED})


def allowed_actions(status: str) -> list[str]:
    """The actions the state machine allows from ``status``, in a stable order."""
    return [a.value for a in Action if (ModuleStatus(status), a) in TRANSITIONS]


def _check(module: Module, action: Action) -> ModuleStatus | None:
    key = (ModuleStatus(module.status), action)
    if key not in TRANSITIONS:
        raise InvalidTransition(
            entity=f"module {module.name}",
            current=module.status,
            action=action.value,
            allowed=allowed_actions(module.status),
        )
    return TRANSITIONS[key]


class InstallCheckFailed(InvalidInput):
    """The module's handlers don't import (raised by upgrade; install records FAILED instead)."""

    code = "install_failed"


@dataclass(frozen=True)
class CodeSource:
    """Where the code of a registration or upgrade comes from: a server folder or an upload.

    Attributes:
        path: An absolute folder on the API host (needs ``modules:write``; read as the API's user).
        bundle: The bytes of an uploaded ``.zip`` / ``.tar.gz``.
        filename: The uploaded file's name, for the record.
        manifest: A manifest given with a ``path``, used instead of the folder's manifest.json.
    """

    path: Path | None = None
    bundle: bytes | None = None
    filename: str | None = None
    manifest: dict[str, Any] | None = None


@dataclass
class InstallOutcome:
    """The result of :func:`install_module`; on failure the module is FAILED (to be committed)."""

    module: Module
    ok: bool
    reason: str | None = None
    failures: dict[str, str] = field(default_factory=dict)


def _now() -> datetime:
    return datetime.now(UTC)


# --- reading ---------------------------------------------------------------------------------------


async def get_module(*, session: AsyncSession, name: str) -> Module:
    module = await session.scalar(select(Module).where(Module.name == name))
    if module is None:
        raise NotFound(f"module {name!r} not found", details={"name": name})
    return module


async def list_modules(
    *,
    session: AsyncSession,
    page: int,
    limit: int,
    status: ModuleStatus | None = None,
    search: str | None = None,
) -> Page[Module]:
    stmt = select(Module).order_by(Module.name)
    if status is not None:
        stmt = stmt.where(Module.status == status.value)
    if search:
        pattern = f"%{escape_like(search)}%"
        stmt = stmt.where(
            or_(
                Module.name.ilike(pattern, escape="\\"),
                Module.display_name.ilike(pattern, escape="\\"),
                Module.description.ilike(pattern, escape="\\"),
            )
        )
    return await paginate(session, stmt, page=page, limit=limit)


async def list_versions(
    *, session: AsyncSession, name: str, page: int, limit: int
) -> tuple[Module, Page[ModuleVersion]]:
    """The module and its stored versions, newest first."""
    module = await get_module(session=session, name=name)
    stmt = (
        select(ModuleVersion)
        .where(ModuleVersion.module_id == module.id)
        .order_by(ModuleVersion.created_at.desc(), ModuleVersion.id)
    )
    return module, await paginate(session, stmt, page=page, limit=limit)


def _jobs(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    jobs = manifest.get("jobs")
    return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []


def _for_each(declared: Any) -> dict[str, Any] | None:
    """A step's fan-out (``forEach``) with its defaults, or None for a plain step."""
    if not isinstance(declared, dict):
        return None
    return {
        "concurrency": declared.get("concurrency", 10),
        "max_items": declared.get("maxItems", 1000),
        "continue_on_item_error": declared.get("continueOnItemError", False),
    }


def _retry_policy(retries: Mapping[str, Any] | None) -> dict[str, Any]:
    retries = retries or {}
    return {
        "max_attempts": retries.get("maxAttempts", 1),
        "initial_interval_seconds": retries.get("initialIntervalSeconds", 1),
        "backoff_coefficient": retries.get("backoffCoefficient", 2),
        "maximum_interval_seconds": retries.get("maximumIntervalSeconds"),
        "non_retryable_errors": list(retries.get("nonRetryableErrors", [])),
    }


def job_types(module: Module) -> list[dict[str, Any]]:
    """The job types a module offers, with what a job creation form needs (schemas, defaults)."""
    manifest = module.manifest or {}
    listeners = manifest.get("events", {}).get("listeners", []) if isinstance(manifest.get("events"), dict) else []
    items = []
    for job in _jobs(manifest):
        schema = job.get("config") or {"type": "object", "properties": {}}
        schedule = job.get("schedule") or None
        policy = _retry_policy(job.get("retries"))
        items.append(
            {
                "name": job["name"],
                "display_name": job.get("displayName") or job["name"],
                "description": job.get("description", ""),
                "workflow_type": f"{module.name}.{job['name']}",
                "handler": job.get("handler"),
                "steps": [
                    {
                        "name": step.get("name"),
                        "handler": step.get("handler"),
                        "timeout_seconds": step.get("timeoutSeconds"),
                        "retry_policy": _retry_policy(step["retries"]) if "retries" in step else None,
                        "for_each": _for_each(step.get("forEach")),
                    }
                    for step in job.get("steps", [])
                ],
                "schedule": schedule["cron"] if schedule else None,
                "timezone": schedule.get("timezone", "UTC") if schedule else None,
                "config_schema": schema,
                "defaults": mask_secrets(schema, apply_config_defaults(schema, {})),
                "secret_fields": sorted(secret_fields(schema)),
                "timeout_seconds": job.get("timeoutSeconds", 300),
                "max_attempts": max(int(policy["max_attempts"]), 1),
                "retries": max(int(policy["max_attempts"]) - 1, 0),
                "create_job": job.get("createJob") or False,
                "retry_policy": policy,
                "overlap": job.get("overlap", "skip"),
                "catchup_window_seconds": job.get("catchupWindowSeconds", 60),
                "task_queue": job.get("taskQueue"),
                "notifications": job.get("notifications", {}),
                "listeners": [
                    {k: v for k, v in listener.items() if k != "job"}
                    for listener in listeners
                    if isinstance(listener, dict) and listener.get("job") == job["name"]
                ],
            }
        )
    return items


# --- staging: unpack, read and validate what is being registered --------------------------------


@dataclass
class _Staged:
    data: bytes
    sha256: str
    manifest: dict[str, Any]
    folder: Path
    source: str

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])


def _manifest_error(code: str, message: str) -> InvalidManifest:
    issue = {"path": "", "code": code, "message": message}
    return InvalidManifest(f"manifest is invalid: {message}", details={"errors": [issue], "warnings": []})


def _manifest_too_large() -> InvalidManifest:
    return _manifest_error("manifest.too_large", f"the manifest is larger than {MAX_MANIFEST_BYTES // 1024} KiB")


def _stage(source: CodeSource, workdir: Path) -> _Staged:
    """Pack or take the archive, unpack it in ``workdir`` and validate its manifest (blocking)."""
    if source.path is not None:
        path = source.path
        if not path.is_absolute():
            raise InvalidInput("path must be an absolute folder on the server", details={"path": str(path)})
        if not path.is_dir():
            raise InvalidInput(f"{path} is not an existing folder on the server", details={"path": str(path)})
        data, sha = codestore.pack_folder(path)
        label = f"path:{path}"
    elif source.bundle is not None:
        data = source.bundle
        if len(data) > codestore.MAX_BUNDLE_BYTES:
            raise PayloadTooLarge(f"the bundle exceeds {codestore.MAX_BUNDLE_BYTES // codestore.MiB} MiB")
        sha = codestore.sha256_hex(data)
        label = f"upload:{(source.filename or 'bundle')[:200]}"
    else:
        raise InvalidInput("give a server path or upload a bundle")
    folder = workdir / "code"
    codestore.safe_extract(data, folder, max_bytes=codestore.MAX_UNPACKED_BYTES, max_files=codestore.MAX_FILES)
    manifest: object
    if source.manifest is not None:
        manifest = source.manifest
        if len(json.dumps(manifest, separators=(",", ":"), default=str)) > MAX_MANIFEST_BYTES:
            raise _manifest_too_large()
    else:
        manifest_file = folder / "manifest.json"
        if not manifest_file.is_file():
            raise _manifest_error("manifest.missing", "no manifest.json at the root of the module")
        if manifest_file.stat().st_size > MAX_MANIFEST_BYTES:
            raise _manifest_too_large()
        try:
            manifest = json.loads(manifest_file.read_bytes())
        except (ValueError, RecursionError) as exc:
            raise _manifest_error("manifest.invalid_json", f"manifest.json is not valid JSON: {exc}") from exc
    report = validate_manifest(manifest, code_root=folder)
    if not report.valid:
        first = report.errors[0]
        raise InvalidManifest(
            f"manifest is invalid ({len(report.errors)} error(s)); first: {first.path or '/'} "
            f"[{first.code}] {first.message}",
            details={
                "errors": [i.to_dict() for i in report.errors],
                "warnings": [i.to_dict() for i in report.warnings],
            },
        )
    assert isinstance(manifest, dict)
    return _Staged(data=data, sha256=sha, manifest=manifest, folder=folder, source=label)


# --- the import check ------------------------------------------------------------------------------

#: Limits of the import check's process (the same confinement as handler processes: autoplat._child).
_CHECK_MEMORY_BYTES = 1024 * 1024 * 1024
_CHECK_OPEN_FILES = 256


def _handler_refs(manifest: Mapping[str, Any]) -> list[str]:
    refs: list[str] = []
    for job in _jobs(manifest):
        candidates = [job.get("handler"), *(s.get("handler") for s in job.get("steps", []) if isinstance(s, dict))]
        refs += [r for r in candidates if isinstance(r, str) and r not in refs]
    return refs


def _clean_env() -> dict[str, str]:
    # Nothing of the platform's environment (secrets, DB URLs) reaches module code.
    return {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _last_line(text: bytes) -> str:
    lines = [line for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


async def check_handlers(
    folder: Path,
    manifest: Mapping[str, Any],
    *,
    timeout: float = INSTALL_TIMEOUT_SECONDS,
    forbidden: Sequence[str] = (),
) -> dict[str, str]:
    """Import every handler of every job and step in a fresh, confined interpreter.

    The child runs ``python -I -B -m autoplat._child --check`` in ``folder``, confined as handler
    processes are (no platform environment, no reading of ``forbidden`` folders such as the state
    folder, memory, CPU and open-file limits, no capabilities), with only the manifest's code root
    on top of ``sys.path``: module code imported at registration can do no more than a handler.

    Returns:
        ``{handler reference or "*": error}``; empty when every handler imports and is callable.
    """
    refs = _handler_refs(manifest)
    if not refs:
        return {}
    code_root = (folder / str((manifest.get("python") or {}).get("codeRoot", "."))).resolve()
    argv = [
        "-I", "-B", "-m", "autoplat._child", "--check", str(code_root), "--refs", json.dumps(refs),
        "--memory-bytes", str(_CHECK_MEMORY_BYTES), "--open-files", str(_CHECK_OPEN_FILES),
        "--cpu-seconds", str(max(int(timeout), 1)),
    ]  # fmt: skip
    for path in forbidden:
        argv += ["--forbid", str(path)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv,
        cwd=str(folder),
        env=_clean_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        return {"*": f"import check timed out after {timeout:g} s"}
    except BaseException:
        _kill(proc)
        raise
    try:
        result = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
        if not isinstance(result, dict):
            raise ValueError(result)
    except (ValueError, IndexError):
        crash = _scrub(_last_line(err), folder, code_root)[-500:]
        return {"*": f"import check crashed (exit code {proc.returncode}): {crash}"}
    return {str(k): _scrub(str(v), folder, code_root) for k, v in result.items()}


def _scrub(text: str, *folders: Path) -> str:
    """``text`` without the host's folders: paths inside the code folder read relative to the bundle."""
    for folder in sorted({str(f) for f in folders} | {str(f.resolve()) for f in folders}, key=len, reverse=True):
        text = text.replace(folder + os.sep, "").replace(folder, ".")
    return text


def _failure_reason(failures: Mapping[str, str]) -> str:
    items = list(failures.items())
    ref, error = items[0]
    reason = error if ref == "*" else f"handler {ref} cannot be imported: {error}"
    if len(items) > 1:
        reason += f" (and {len(items) - 1} more handler(s))"
    return reason[:_MAX_REASON]


# --- locking and bookkeeping -----------------------------------------------------------------------


async def _lock(session: AsyncSession, name: str) -> Module:
    """Load the module row locked for this transaction, with its latest committed state."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite has no row locks: a no-op write takes the database write lock now, so the
        # state read below can't change before this transaction ends.
        await session.execute(
            update(Module).where(Module.name == name).values(revision=Module.revision),
            execution_options={"synchronize_session": False},
        )
    stmt = select(Module).where(Module.name == name).with_for_update().execution_options(populate_existing=True)
    module = await session.scalar(stmt)
    if module is None:
        raise NotFound(f"module {name!r} not found", details={"name": name})
    return module


def _unchanged(module: Module, seen: tuple[int, str, str | None], action: str) -> None:
    """Refuse to apply a check made on a state that changed before the lock was taken."""
    if (module.revision, module.version, module.bundle_sha256) != seen:
        raise Conflict(
            f"module {module.name} changed while its code was being checked; {action} it again",
            details={"current_state": module.status, "version": module.version},
        )


def _newer(module: Module, version: str) -> None:
    if not parse_version(version) > parse_version(module.version):
        raise Conflict(
            f"cannot upgrade module {module.name} to {version}: the version must be greater than {module.version}",
            details={"current_version": module.version, "version": version},
        )


def _record(
    session: AsyncSession,
    actor: Actor,
    module: Module,
    *,
    action: str,
    event: str,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
    audit_details: dict[str, Any] | None = None,
) -> None:
    """The audit row and the platform event of a transition; ``audit_details`` stay out of the event."""
    payload = {"name": module.name, "version": module.version, "status": module.status, **(details or {})}
    audit.record(
        session=session,
        actor=actor,
        action=f"module.{action}",
        target_type="module",
        target_id=module.name,
        outcome=outcome,
        details={**payload, **(audit_details or {})},
    )
    events.record(
        session=session, name=f"module.{event}", payload=payload, source=_EVENT_SOURCE, module_name=module.name
    )


async def _current_version(session: AsyncSession, module: Module) -> ModuleVersion:
    stmt = select(ModuleVersion).where(ModuleVersion.module_id == module.id, ModuleVersion.version == module.version)
    row = await session.scalar(stmt)
    if row is None:  # pragma: no cover - every registration writes its version row
        raise NotFound(f"module {module.name} has no stored code for version {module.version}")
    return row


async def _ensure_code(session: AsyncSession, state_dir: Path, module: Module) -> Path:
    """The module's current code folder on this host, unpacked from the DB bundle if absent."""
    version = await _current_version(session, module)
    sha = version.bundle_sha256
    if not sha:
        raise Conflict(f"module {module.name} {module.version} has no code bundle; register it again")
    try:
        folder = codestore.materialize(state_dir, module.name, module.version, sha)
    except FileNotFoundError:
        bundle = await session.scalar(select(ModuleVersion.bundle).where(ModuleVersion.id == version.id))
        folder = await asyncio.to_thread(codestore.materialize, state_dir, module.name, module.version, sha, bundle)
    module.code_path = str(folder)
    return folder


def _dependencies(manifest: Mapping[str, Any]) -> dict[str, str]:
    deps = manifest.get("dependencies")
    return {str(k): str(v) for k, v in deps.items()} if isinstance(deps, dict) else {}


async def _require_dependencies(session: AsyncSession, name: str, manifest: Mapping[str, Any], action: str) -> None:
    """Refuse unless every dependency is ENABLED at a version in range; locks them (shared) meanwhile."""
    deps = _dependencies(manifest)
    if not deps:
        return
    # FOR SHARE: a concurrent disable of a dependency waits for this transaction, then sees the
    # dependent enabled and refuses.
    rows = await session.scalars(
        select(Module).where(Module.name.in_(deps)).order_by(Module.name).with_for_update(read=True)
    )
    found = {m.name: m for m in rows}
    problems = []
    for dep, spec in sorted(deps.items()):
        other = found.get(dep)
        if other is None:
            problem = "not registered"
        elif other.status != S.ENABLED:
            problem = f"is {other.status}"
        elif not parse_range(spec).contains(parse_version(other.version)):
            problem = f"version {other.version} is outside {spec}"
        else:
            continue
        problems.append(
            {
                "module": dep,
                "range": spec,
                "status": other.status if other else None,
                "version": other.version if other else None,
                "problem": problem,
            }
        )
    if problems:
        listed = ", ".join(f"{p['module']} {p['range']} ({p['problem']})" for p in problems)
        raise Conflict(
            f"cannot {action} module {name}: dependencies not satisfied: {listed}",
            details={"missing_dependencies": problems},
        )


async def _refuse_enabled_dependents(
    session: AsyncSession, module: Module, action: str, *, new_version: str | None = None
) -> None:
    """Refuse while ENABLED modules depend on ``module`` (or, for an upgrade, on a range excluding it)."""
    rows = await session.scalars(select(Module).where(Module.status == S.ENABLED, Module.name != module.name))
    blocking = []
    for other in rows:
        spec = _dependencies(other.manifest).get(module.name)
        if spec is None:
            continue
        if new_version is not None and parse_range(spec).contains(parse_version(new_version)):
            continue
        blocking.append({"module": other.name, "version": other.version, "range": spec})
    if blocking:
        listed = ", ".join(f"{b['module']} (needs {b['range']})" for b in sorted(blocking, key=lambda b: b["module"]))
        raise Conflict(
            f"cannot {action} module {module.name}: enabled modules depend on it: {listed}",
            details={"dependents": blocking},
        )


# --- registration and lifecycle --------------------------------------------------------------------


async def _staged(source: CodeSource, workdir: Path) -> _Staged:
    return await asyncio.to_thread(_stage, source, workdir)


async def register_module(*, session: AsyncSession, actor: Actor, state_dir: Path, source: CodeSource) -> Module:
    """Register a module (REGISTERED) from a server folder or an uploaded bundle.

    Raises:
        InvalidManifest: the manifest is missing or invalid (details: errors and warnings).
        InvalidInput: not a folder, or a bundle that isn't a safe archive.
        PayloadTooLarge: over the bundle limits.
        Conflict: a module of that name exists (upgrade it instead).
    """
    with tempfile.TemporaryDirectory(prefix="autoplat-stage-") as tmp:
        staged = await _staged(source, Path(tmp))
        existing = await session.scalar(select(Module).where(Module.name == staged.name))
        if existing is not None:
            raise Conflict(
                f"module {staged.name} already exists (version {existing.version}, {existing.status}); "
                f"upgrade it with POST /modules/{staged.name}/upgrade",
                details={"name": existing.name, "version": existing.version, "status": existing.status},
            )
        folder = await asyncio.to_thread(
            codestore.materialize, state_dir, staged.name, staged.version, staged.sha256, staged.data
        )
    manifest = staged.manifest
    module = Module(
        id=new_id(),
        name=staged.name,
        version=staged.version,
        display_name=manifest["displayName"],
        description=manifest.get("description", ""),
        author=manifest.get("author"),
        status=S.REGISTERED.value,
        manifest=manifest,
        code_path=str(folder),
        bundle_sha256=staged.sha256,
        config={},
        revision=1,
    )
    session.add(module)
    session.add(_version_row(module, staged, folder))
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"module {staged.name} already exists", details={"name": staged.name}) from exc
    _record(
        session, actor, module, action="register", event="registered",
        audit_details={"source": staged.source, "bundle_sha256": staged.sha256},
    )  # fmt: skip
    return module


def _version_row(module: Module, staged: _Staged, folder: Path) -> ModuleVersion:
    return ModuleVersion(
        id=new_id(),
        module_id=module.id,
        version=staged.version,
        manifest=staged.manifest,
        code_path=str(folder),
        bundle_sha256=staged.sha256,
        bundle=staged.data,
        bundle_size=len(staged.data),
        source=staged.source,
    )


async def install_module(*, session: AsyncSession, actor: Actor, state_dir: Path, name: str) -> InstallOutcome:
    """Install: prove every handler imports (isolated subprocess), then INSTALLED, or FAILED with a reason.

    A failed import check is not raised: the module is set FAILED in the session and the outcome
    says so, so the caller commits the FAILED state and then reports the failure.
    """
    # The import check (up to a minute) runs before the row is locked: on SQLite the lock is the
    # whole database. The lock then proves nothing changed meanwhile.
    module = await get_module(session=session, name=name)
    _check(module, Action.install)
    seen = (module.revision, module.version, module.bundle_sha256)
    folder = await _ensure_code(session, state_dir, module)
    failures = await check_handlers(folder, module.manifest, forbidden=[str(state_dir)])
    module = await _lock(session, name)
    _unchanged(module, seen, "install")
    _check(module, Action.install)
    module.code_path = str(folder)
    module.revision += 1
    if failures:
        reason = _failure_reason(failures)
        module.status = S.FAILED.value
        module.status_reason = reason
        _record(
            session, actor, module, action="install", event="failed", outcome="failure",
            details={"reason": reason, "failures": failures},
            audit_details={"bundle_sha256": module.bundle_sha256},
        )  # fmt: skip
        return InstallOutcome(module=module, ok=False, reason=reason, failures=failures)
    module.status = S.INSTALLED.value
    module.status_reason = None
    module.installed_at = _now()
    _record(
        session, actor, module, action="install", event="installed", details={"bundle_sha256": module.bundle_sha256}
    )
    return InstallOutcome(module=module, ok=True)


async def enable_module(
    *,
    session: AsyncSession,
    actor: Actor,
    hooks: LifecycleHooks,
    name: str,
    min_interval: int | None = None,
    alert_interval: int = 60,
) -> Module:
    """INSTALLED / DISABLED -> ENABLED; every dependency must be ENABLED at a version in range.

    The jobs the manifest asks for (``createJob``) are created if missing, then every job's
    schedule follows (the hook). ``min_interval``: AUTOPLAT_MIN_SCHEDULE_INTERVAL_SECONDS for them.
    The manifest's alert rules are created or resumed (registry/services/module_alerts.py);
    ``alert_interval``: AUTOPLAT_ALERTS_DEFAULT_INTERVAL_SECONDS for those that name none.
    """
    module = await _lock(session, name)
    _check(module, Action.enable)
    await _require_dependencies(session, module.name, module.manifest, "enable")
    module.status = S.ENABLED.value
    module.enabled_at = _now()
    module.revision += 1
    _record(
        session, actor, module, action="enable", event="enabled", audit_details={"bundle_sha256": module.bundle_sha256}
    )
    await session.flush()
    await job_service.ensure_manifest_jobs(session=session, module=module, actor=actor, min_interval=min_interval)
    orphaned = await module_alerts.sync(session=session, module=module, actor=actor, default_interval=alert_interval)
    await hooks.module_enabled(session=session, module=module)
    await _orphaned(session, hooks, orphaned, f"module {module.name} {module.version} no longer ships its rule")
    return module


async def _orphaned(session: AsyncSession, hooks: LifecycleHooks, workflow_ids: list[str], reason: str) -> None:
    if workflow_ids:
        await hooks.incidents_orphaned(session=session, workflow_ids=workflow_ids, reason=reason)


async def disable_module(*, session: AsyncSession, actor: Actor, hooks: LifecycleHooks, name: str) -> Module:
    """ENABLED -> DISABLED, unless enabled modules depend on it."""
    module = await _lock(session, name)
    _check(module, Action.disable)
    await _refuse_enabled_dependents(session, module, "disable")
    module.status = S.DISABLED.value
    module.revision += 1
    _record(session, actor, module, action="disable", event="disabled")
    await session.flush()
    await module_alerts.pause(session=session, module=module)
    await hooks.module_disabled(session=session, module=module)
    return module


async def uninstall_module(*, session: AsyncSession, actor: Actor, hooks: LifecycleHooks, name: str) -> Module:
    """INSTALLED / DISABLED / FAILED -> REGISTERED (the code stays registered; schedules go)."""
    module = await _lock(session, name)
    _check(module, Action.uninstall)
    await _refuse_enabled_dependents(session, module, "uninstall")
    previous = module.status
    module.status = S.REGISTERED.value
    module.status_reason = None
    module.installed_at = None
    module.enabled_at = None
    module.revision += 1
    _record(session, actor, module, action="uninstall", event="uninstalled", details={"previous_status": previous})
    await session.flush()
    reason = f"module {module.name} was uninstalled"
    orphaned = await module_alerts.remove(session=session, module=module.name, actor=actor, reason=reason)
    await hooks.module_uninstalled(session=session, module=module)
    await _orphaned(session, hooks, orphaned, reason)
    return module


async def delete_module(*, session: AsyncSession, actor: Actor, state_dir: Path, name: str) -> None:
    """Delete a REGISTERED or FAILED module with every stored version, unless jobs or dependents remain."""
    module = await _lock(session, name)
    _check(module, Action.delete)
    await _refuse_enabled_dependents(session, module, "delete")
    jobs = int(await session.scalar(select(func.count()).select_from(Job).where(Job.module_id == module.id)) or 0)
    if jobs:
        raise Conflict(
            f"cannot delete module {module.name}: {jobs} job(s) still use it; delete them first",
            details={"jobs": jobs},
        )
    _record(session, actor, module, action="delete", event="deleted")
    # Uninstall removed its alert rules already; none is left behind by a module that is gone.
    await module_alerts.remove(session=session, module=module.name, actor=actor, reason=f"module {name} was deleted")
    await session.delete(module)
    try:
        await session.flush()
    except IntegrityError as exc:  # a job created meanwhile (FK RESTRICT)
        raise Conflict(f"cannot delete module {name}: jobs still use it") from exc
    # The unpacked folders are a cache of the DB bundles: if this transaction rolls back after all,
    # the next install unpacks them again.
    await asyncio.to_thread(codestore.remove_module_code, state_dir, name)


async def upgrade_module(
    *,
    session: AsyncSession,
    actor: Actor,
    hooks: LifecycleHooks,
    state_dir: Path,
    secret_key: str,
    name: str,
    source: CodeSource,
    pause_invalid: bool = False,
    min_interval: int | None = None,
    alert_interval: int = 60,
) -> Module:
    """Switch a module to a newer version, keeping its state (FAILED goes back to REGISTERED).

    The new code is validated like a registration and, when the module is installed, import-checked
    like an install. Old versions stay stored: executions started on them keep running their code.
    Every job of the module is checked against the new version (its job type still exists, its
    config passes the new config schema): any that does not fit refuses the upgrade (409
    ``jobs_invalid`` naming the jobs and fields), unless ``pause_invalid`` disables them, each with
    its reason. An enabled module gets the jobs its new manifest asks for (``createJob``). The alert
    rules of an enabled or disabled module follow the new manifest (registry/services/module_alerts.py).

    Raises:
        InvalidManifest / InvalidInput / PayloadTooLarge: as for a registration; also a manifest
            whose name isn't ``name``.
        InstallCheckFailed: an installed module's new handlers don't import (nothing changes).
        Conflict: the version isn't greater than the current one, an enabled module's new
            dependencies aren't enabled, or enabled dependents' ranges exclude the new version.
    """
    await get_module(session=session, name=name)  # 404 before any heavy work
    with tempfile.TemporaryDirectory(prefix="autoplat-stage-") as tmp:
        staged = await _staged(source, Path(tmp))
        if staged.name != name:
            raise InvalidInput(
                f"the manifest is for module {staged.name!r}, not {name!r}",
                details={"manifest_name": staged.name, "module": name},
            )
        # Checked on an unlocked read first (the import check takes up to a minute and, on SQLite,
        # the row lock is the whole database), then again under the lock.
        module = await get_module(session=session, name=name)
        _check(module, Action.upgrade)
        _newer(module, staged.version)
        seen = (module.revision, module.version, module.bundle_sha256)
        if module.status in INSTALLED_STATES:
            failures = await check_handlers(staged.folder, staged.manifest, forbidden=[str(state_dir)])
            if failures:
                reason = _failure_reason(failures)
                raise InstallCheckFailed(
                    f"cannot upgrade module {name} to {staged.version}: {reason}",
                    details={"version": staged.version, "failures": failures},
                )
        module = await _lock(session, name)
        _unchanged(module, seen, "upgrade")
        target_status = _check(module, Action.upgrade)
        previous, previous_sha = module.version, module.bundle_sha256
        if module.status == S.ENABLED:
            await _require_dependencies(session, name, staged.manifest, "upgrade")
            await _refuse_enabled_dependents(session, module, "upgrade", new_version=staged.version)
        invalid = await job_service.check_jobs_against(
            session=session,
            module=module,
            manifest=staged.manifest,
            version=staged.version,
            crypto=job_service.SecretCodec(secret_key),
        )
        if invalid and not pause_invalid:
            job_service.refuse_invalid_jobs(module, staged.version, invalid)
        config = _stored_config(module, secret_key=secret_key)
        folder = await asyncio.to_thread(
            codestore.materialize, state_dir, name, staged.version, staged.sha256, staged.data
        )
    session.add(_version_row(module, staged, folder))
    manifest = staged.manifest
    module.version = staged.version
    module.manifest = manifest
    module.display_name = manifest["displayName"]
    module.description = manifest.get("description", "")
    module.author = manifest.get("author")
    module.code_path = str(folder)
    module.bundle_sha256 = staged.sha256
    assert target_status is not None
    if target_status != module.status:
        module.status = target_status.value
        module.status_reason = None
    # Split the configuration again by the new schema: a field that became secret leaves the clear
    # column; one that is no longer secret stays encrypted.
    keep = _legacy_secrets(module, config_schema(module), secret_key)
    _store_config(module, config, secret_key=secret_key, keep_encrypted=keep)
    module.revision += 1
    _record(
        session, actor, module, action="upgrade", event="upgraded",
        details={"previous_version": previous},
        audit_details={"source": staged.source, "bundle_sha256": staged.sha256, "previous_bundle_sha256": previous_sha},
    )  # fmt: skip
    await session.flush()
    if invalid:
        await job_service.pause_jobs(
            session=session, actor=actor, invalid=invalid, module=module, version=staged.version
        )
    if module.status == S.ENABLED:
        await job_service.ensure_manifest_jobs(session=session, module=module, actor=actor, min_interval=min_interval)
    orphaned: list[str] = []
    if module.status in (S.ENABLED, S.DISABLED):
        orphaned = await module_alerts.sync(
            session=session, module=module, actor=actor, default_interval=alert_interval
        )
    await hooks.module_upgraded(session=session, module=module, previous_version=previous)
    await _orphaned(session, hooks, orphaned, f"module {module.name} {module.version} no longer ships its rule")
    return module


# --- configuration ---------------------------------------------------------------------------------


def config_schema(module: Module) -> dict[str, Any]:
    schema = (module.manifest or {}).get("config")
    return schema if isinstance(schema, dict) else {}


def _secret_values(schema: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The values of secret fields in ``config`` (nested objects followed), without the rest."""
    props = schema.get("properties")
    out: dict[str, Any] = {}
    if not isinstance(props, Mapping):
        return out
    for key, sub in props.items():
        if key not in config or not isinstance(sub, Mapping):
            continue
        if sub.get("secret") is True:
            if config[key] is not None:
                out[key] = config[key]
        elif isinstance(config[key], dict):
            nested = _secret_values(sub, config[key])
            if nested:
                out[key] = nested
    return out


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _keep_secrets(schema: Mapping[str, Any], new: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """Write-only secrets: absent or masked in ``new`` -> the stored value; null -> removed."""
    result = dict(new)
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return result
    for key, sub in props.items():
        if not isinstance(sub, Mapping):
            continue
        if sub.get("secret") is True:
            if key not in result or result[key] == MASK:
                if stored.get(key) is not None:
                    result[key] = stored[key]
                else:
                    result.pop(key, None)
            elif result[key] is None:
                del result[key]
        elif isinstance(result.get(key), dict):
            previous = stored.get(key)
            result[key] = _keep_secrets(sub, result[key], previous if isinstance(previous, dict) else {})
    return result


def _decrypt(module: Module, secret_key: str | None) -> dict[str, Any]:
    if module.secrets is None:
        return {}
    if secret_key is None:  # pragma: no cover - callers pass the key whenever secrets exist
        raise Conflict(f"module {module.name} has stored secrets and no key was given")
    try:
        return decrypt_json(secret_key, module.secrets)
    except DecryptionFailed as exc:
        raise Conflict(
            f"the stored secrets of module {module.name} cannot be decrypted with the current "
            "AUTOPLAT_SECRET_KEY; set them again",
            details={"name": module.name},
        ) from exc


def _without_masks(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _without_masks(v) if isinstance(v, Mapping) else v for k, v in config.items() if v != MASK}


def _stored_config(module: Module, *, secret_key: str | None) -> dict[str, Any]:
    """The configuration as set (no defaults), secrets in clear."""
    return _merge(dict(module.config or {}), _decrypt(module, secret_key))


def _store_config(
    module: Module,
    config: Mapping[str, Any],
    *,
    secret_key: str | None,
    keep_encrypted: frozenset[str] = frozenset(),
) -> None:
    """Split ``config`` into the clear column and the encrypted one, by the current schema.

    ``keep_encrypted`` names top-level keys to keep encrypted although the schema doesn't mark
    them secret (any more): a value once written as a secret never lands in clear by an upgrade.
    """
    schema = config_schema(module)
    secrets = _secret_values(schema, config)
    # Module.config never holds a secret: a set secret reads "********" there.
    clear = mask_secrets(schema, config)
    for key in keep_encrypted:
        if config.get(key) is not None:
            secrets[key] = config[key]
            clear[key] = MASK
    if secrets:
        if secret_key is None:  # pragma: no cover - callers pass the key
            raise Conflict("a secret key is needed to store secrets")
        module.secrets = encrypt_json(secret_key, secrets)
    else:
        module.secrets = None
    module.config = clear


def _legacy_secrets(module: Module, schema: Mapping[str, Any], secret_key: str | None) -> frozenset[str]:
    """Top-level keys stored encrypted that ``schema`` doesn't mark secret, at top level or below."""
    props = schema.get("properties")
    props = props if isinstance(props, Mapping) else {}
    return frozenset(
        key
        for key in _decrypt(module, secret_key)
        if key not in secret_fields(schema) and not _nested_secret(props.get(key))
    )


def _nested_secret(schema: object) -> bool:
    if not isinstance(schema, Mapping):
        return False
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return False
    return any(
        isinstance(sub, Mapping) and (sub.get("secret") is True or _nested_secret(sub)) for sub in props.values()
    )


def public_config(module: Module) -> dict[str, Any]:
    """The module configuration with defaults applied and every set secret masked."""
    schema = config_schema(module)
    return mask_secrets(schema, apply_config_defaults(schema, module.config or {}))


def resolved_config(*, module: Module, secret_key: str) -> dict[str, Any]:
    """The module configuration in clear with defaults: what a running job receives."""
    schema = config_schema(module)
    return apply_config_defaults(schema, _stored_config(module, secret_key=secret_key))


async def update_config(
    *, session: AsyncSession, actor: Actor, secret_key: str, name: str, config: Mapping[str, Any]
) -> Module:
    """Replace the module configuration (PUT semantics), validated against the manifest's config schema.

    Secrets are write-only: omitted or sent as ``"********"`` they keep their stored value; sent as
    null they are removed. They are stored encrypted in ``Module.secrets``.

    Raises:
        InvalidInput: the configuration (with defaults) doesn't satisfy the schema.
    """
    module = await _lock(session, name)
    schema = config_schema(module)
    try:
        stored = _stored_config(module, secret_key=secret_key)
        legacy = _legacy_secrets(module, schema, secret_key)
    except Conflict:
        # Secrets encrypted under another key are lost: the ones sent now replace them, and
        # the ones not sent are unset (and must be sent if the schema requires them).
        stored, legacy = _without_masks(module.config or {}), frozenset()
    new = _keep_secrets(schema, dict(config), stored)
    for key in legacy:
        if key not in new or new[key] == MASK:
            new[key] = stored[key]
        elif new[key] is None:
            del new[key]
    issues = validate_config(schema, apply_config_defaults(schema, new))
    if issues:
        first = issues[0]
        raise InvalidInput(
            f"invalid configuration for module {name}: {first.path or '/'}: {first.message}",
            details={"errors": [i.to_dict() for i in issues]},
        )
    before_secrets = _secret_values(schema, stored)
    _store_config(module, new, secret_key=secret_key, keep_encrypted=legacy)
    after_secrets = _secret_values(schema, new)
    changed = sorted(
        k for k in set(before_secrets) | set(after_secrets) if before_secrets.get(k) != after_secrets.get(k)
    )
    module.revision += 1
    audit.record(
        session=session,
        actor=actor,
        action="module.config.update",
        target_type="module",
        target_id=module.name,
        details={"keys": sorted(new), "secrets_changed": changed},
    )
    await session.flush()
    return module


# --- bootstrap -------------------------------------------------------------------------------------


class _Platform(Protocol):
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    hooks: LifecycleHooks


async def ensure_module_from_path(*, state: _Platform, path: Path, enable: bool = True) -> str:
    """Register (or upgrade to a newer version), install and enable a module folder; idempotent.

    Used by ``autoplat dev`` for the example module. Each step commits on its own, so a failed
    install leaves the module registered and FAILED with its reason.

    Returns:
        A one-line summary, e.g. ``"data-sync 1.0.0: ENABLED"``.
    """
    actor = Actor.system("autoplat")
    settings = state.settings
    source = CodeSource(path=Path(path).resolve())
    try:
        local = json.loads((source.path or Path(path)).joinpath("manifest.json").read_text(encoding="utf-8"))
        name, version = str(local["name"]), str(local["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _manifest_error("manifest.missing", f"cannot read the module name and version: {exc}") from exc

    async with unit_of_work(state.sessions) as session:
        module = await session.scalar(select(Module).where(Module.name == name))
        if module is None:
            module = await register_module(session=session, actor=actor, state_dir=settings.state_dir, source=source)
        elif parse_version(version) > parse_version(module.version):
            # The dev stack must come up: jobs the new version refuses are paused, with the reason.
            module = await upgrade_module(
                session=session, actor=actor, hooks=state.hooks, state_dir=settings.state_dir,
                secret_key=settings.encryption_key(), name=name, source=source, pause_invalid=True,
                min_interval=settings.min_schedule_interval_seconds,
                alert_interval=settings.alerts_default_interval_seconds,
            )  # fmt: skip
        elif module.status == S.ENABLED:
            # Enabled before its manifest asked for jobs or rules (an older platform): create them now.
            if await job_service.ensure_manifest_jobs(
                session=session, module=module, actor=actor, min_interval=settings.min_schedule_interval_seconds
            ):
                await state.hooks.module_enabled(session=session, module=module)
            await module_alerts.sync(
                session=session, module=module, actor=actor, default_interval=settings.alerts_default_interval_seconds
            )
    if module.status in (S.REGISTERED, S.FAILED):
        async with unit_of_work(state.sessions) as session:
            outcome = await install_module(session=session, actor=actor, state_dir=settings.state_dir, name=name)
        module = outcome.module
        if not outcome.ok:
            return f"{name} {module.version}: FAILED ({outcome.reason})"
    if enable and module.status in (S.INSTALLED, S.DISABLED):
        async with unit_of_work(state.sessions) as session:
            module = await enable_module(
                session=session,
                actor=actor,
                hooks=state.hooks,
                name=name,
                min_interval=settings.min_schedule_interval_seconds,
                alert_interval=settings.alerts_default_interval_seconds,
            )
    return f"{name} {module.version}: {module.status}"
