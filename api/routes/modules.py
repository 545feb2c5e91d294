"""The module registry: manifest schema and validation, registration, lifecycle, upgrades, config.

Changing which code the platform runs (register / upload, install, enable, upgrade, uninstall,
delete) needs ``modules:install``: admins, plus the roles named in
``AUTOPLAT_MODULE_INSTALL_ROLES``. Disabling a module and setting its configuration need
``modules:write`` (operators). Registering from a server ``path`` reads the API host's filesystem
with the API's rights, so it is an install too.
"""

from __future__ import annotations

import json
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api.deps import PageDep, Requires, SessionDep, StateDep, read_body
from api.errors import error_response
from api.schemas.common import ERROR_RESPONSES, Page
from api.schemas.modules import (
    JobTypeRead,
    ModuleConfigRead,
    ModuleConfigUpdate,
    ModuleRead,
    ModuleRegister,
    ModuleSummary,
    ModuleVersionRead,
    ValidationResult,
)
from registry import codestore
from registry.errors import InvalidInput, PayloadTooLarge
from registry.manifest import manifest_json_schema, secret_fields, validate_manifest
from registry.models import Module, ModuleStatus
from registry.permissions import INSTALL
from registry.services import modules
from registry.services.common import Actor

router = APIRouter(prefix="/modules", tags=["modules"], responses=ERROR_RESPONSES)

#: Largest JSON body accepted (a manifest is a few KiB; the validator caps its size too).
MAX_JSON_BYTES = 2 * codestore.MiB
#: Multipart overhead allowed on top of the bundle itself.
MULTIPART_SLACK = 64 * 1024

ModuleName = Annotated[str, Path(min_length=1, max_length=100, description="Module name")]

_CODE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ModuleRegister.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["bundle"],
                    "properties": {
                        "bundle": {
                            "type": "string",
                            "format": "binary",
                            "description": ".zip or .tar.gz of the module folder (manifest.json at its root "
                            "or in its single top-level folder)",
                        }
                    },
                }
            },
        },
    }
}
_VALIDATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "description": 'A manifest, or {"manifest": <manifest>}. Any JSON is accepted.',
                }
            }
        },
    }
}
_INSTALL_FAILED: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "Invalid manifest or bundle; or the install check failed (the module is then FAILED, "
        'error code "install_failed", details.status_reason)'
    }
}


#: The caller, who may change which module code exists and runs (``modules:install``).
Installer = Annotated[Actor, Requires(INSTALL)]


def module_summary(module: Module) -> ModuleSummary:
    return ModuleSummary(
        id=module.id,
        name=module.name,
        version=module.version,
        display_name=module.display_name,
        description=module.description,
        author=module.author,
        status=module.status,
        status_reason=module.status_reason,
        bundle_sha256=module.bundle_sha256,
        revision=module.revision,
        created_at=module.created_at,
        updated_at=module.updated_at,
        installed_at=module.installed_at,
        enabled_at=module.enabled_at,
        allowed_actions=modules.allowed_actions(module.status),
        job_types=len(modules.job_types(module)),
    )


def module_read(module: Module) -> ModuleRead:
    return ModuleRead(
        **module_summary(module).model_dump(), manifest=module.manifest, config=modules.public_config(module)
    )


# --- request bodies --------------------------------------------------------------------------------


async def _json_body(request: Request) -> Any:
    """The parsed JSON body: 413 over the limit, 400 when it isn't JSON."""
    raw = await read_body(request, MAX_JSON_BYTES, f"{MAX_JSON_BYTES // codestore.MiB} MiB")
    try:
        body = json.loads(raw)
        # Unpaired surrogate escapes ("\ud800") parse but can be neither stored nor answered.
        json.dumps(body, ensure_ascii=False, allow_nan=True).encode("utf-8")
    except (ValueError, RecursionError, UnicodeError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "request body is not valid JSON") from exc
    return body


async def _code_source(request: Request) -> modules.CodeSource:
    """A server path (JSON body) or an uploaded bundle (multipart ``bundle`` field)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > codestore.MAX_BUNDLE_BYTES + MULTIPART_SLACK:
            raise PayloadTooLarge(f"the bundle exceeds {codestore.MAX_BUNDLE_BYTES // codestore.MiB} MiB")
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("bundle")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("multipart body needs a file field named 'bundle'", details={"field": "bundle"})
        data = await upload.read(codestore.MAX_BUNDLE_BYTES + 1)
        await form.close()
        if len(data) > codestore.MAX_BUNDLE_BYTES:
            raise PayloadTooLarge(f"the bundle exceeds {codestore.MAX_BUNDLE_BYTES // codestore.MiB} MiB")
        return modules.CodeSource(bundle=data, filename=upload.filename)
    if content_type and "json" not in content_type:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send JSON {path, manifest?} or multipart with a 'bundle' file"
        )
    try:
        body = ModuleRegister.model_validate(await _json_body(request))
    except ValidationError as exc:
        details = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise InvalidInput("request validation failed", details=details) from exc
    return modules.CodeSource(path=FsPath(body.path), manifest=body.manifest)


# --- the manifest contract ---------------------------------------------------------------------


@router.get("/manifest-schema", response_model=dict[str, Any])
async def get_manifest_schema(_: Actor = Requires("modules:read")) -> dict[str, Any]:
    """The manifest JSON Schema (draft 2020-12)."""
    return manifest_json_schema()


@router.post("/validate", response_model=ValidationResult, openapi_extra=_VALIDATE_BODY)
async def validate(request: Request, _: Actor = Requires("modules:read")) -> Response:
    """Validate a manifest (schema and semantic checks, no code). Always 200 for any JSON body."""
    body = await _json_body(request)
    if isinstance(body, dict) and set(body) == {"manifest"}:
        body = body["manifest"]
    report = validate_manifest(body)
    # ensure_ascii: messages quote the input, which may hold anything.
    return Response(json.dumps(report.to_dict(), ensure_ascii=True), media_type="application/json")


# --- registry ------------------------------------------------------------------------------------


@router.get("", response_model=Page[ModuleSummary])
async def list_modules(
    session: SessionDep,
    paging: PageDep,
    status_: Annotated[ModuleStatus | None, Query(alias="status")] = None,
    search: Annotated[str | None, Query(max_length=200)] = None,
    _: Actor = Requires("modules:read"),
) -> Page[ModuleSummary]:
    """Modules as summaries (no manifest, no configuration: ``GET /modules/{name}`` has them)."""
    page, limit = paging
    result = await modules.list_modules(session=session, page=page, limit=limit, status=status_, search=search)
    return Page(items=[module_summary(m) for m in result.items], total=result.total, page=page, limit=limit)


@router.post(
    "",
    response_model=ModuleRead,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_CODE_BODY,
    responses={413: {"description": "Bundle over the size limits"}},
)
async def register_module(
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    actor: Installer,
) -> ModuleRead:
    """Register a module from a server folder (JSON) or an uploaded .zip / .tar.gz (multipart)."""
    source = await _code_source(request)
    module = await modules.register_module(
        session=session, actor=actor, state_dir=state.settings.state_dir, source=source
    )
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{module.name}"
    return module_read(module)


@router.get("/{name}", response_model=ModuleRead)
async def get_module(name: ModuleName, session: SessionDep, _: Actor = Requires("modules:read")) -> ModuleRead:
    return module_read(await modules.get_module(session=session, name=name))


@router.post("/{name}/install", response_model=ModuleRead, responses=_INSTALL_FAILED)
async def install_module(name: ModuleName, session: SessionDep, state: StateDep, actor: Installer) -> Any:
    """Import every handler in an isolated interpreter: INSTALLED, or FAILED with the reason (422)."""
    outcome = await modules.install_module(session=session, actor=actor, state_dir=state.settings.state_dir, name=name)
    if not outcome.ok:
        # Returned, not raised: the unit of work commits the FAILED state with its reason.
        read = module_read(outcome.module)
        return error_response(
            422,
            modules.InstallCheckFailed.code,
            f"cannot install module {name}: {outcome.reason}",
            {
                "status": read.status,
                "status_reason": read.status_reason,
                "failures": outcome.failures,
                "allowed_actions": read.allowed_actions,
            },
        )
    return module_read(outcome.module)


@router.post("/{name}/enable", response_model=ModuleRead)
async def enable_module(name: ModuleName, session: SessionDep, state: StateDep, actor: Installer) -> ModuleRead:
    """Enable: schedules resume, routes and listeners go live, the jobs the manifest asks for
    (``createJob``) are created if the module has none of that job type yet, and the alert rules it
    ships are created or resumed."""
    module = await modules.enable_module(
        session=session,
        actor=actor,
        hooks=state.hooks,
        name=name,
        min_interval=state.settings.min_schedule_interval_seconds,
        alert_interval=state.settings.alerts_default_interval_seconds,
    )
    return module_read(module)


@router.post("/{name}/disable", response_model=ModuleRead)
async def disable_module(
    name: ModuleName, session: SessionDep, state: StateDep, actor: Actor = Requires("modules:write")
) -> ModuleRead:
    module = await modules.disable_module(session=session, actor=actor, hooks=state.hooks, name=name)
    return module_read(module)


@router.post("/{name}/uninstall", response_model=ModuleRead)
async def uninstall_module(name: ModuleName, session: SessionDep, state: StateDep, actor: Installer) -> ModuleRead:
    module = await modules.uninstall_module(session=session, actor=actor, hooks=state.hooks, name=name)
    return module_read(module)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_module(name: ModuleName, session: SessionDep, state: StateDep, actor: Installer) -> None:
    await modules.delete_module(session=session, actor=actor, state_dir=state.settings.state_dir, name=name)


@router.post(
    "/{name}/upgrade",
    response_model=ModuleRead,
    openapi_extra=_CODE_BODY,
    responses={
        **_INSTALL_FAILED,
        409: {
            "description": 'Not newer, dependencies, or (error code "jobs_invalid") jobs whose config the new '
            "version refuses: details.invalid_jobs names each job and field; pause_invalid=true disables them instead"
        },
    },
)
async def upgrade_module(
    name: ModuleName,
    request: Request,
    session: SessionDep,
    state: StateDep,
    actor: Installer,
    pause_invalid: Annotated[
        bool,
        Query(description="Disable the jobs the new version refuses (each with its paused_reason) instead of a 409"),
    ] = False,
) -> ModuleRead:
    """Switch to a newer version (same bodies as registration); the lifecycle state is kept.

    Every job of the module is checked against the new version first (job type present, config
    valid against the new config schema)."""
    source = await _code_source(request)
    module = await modules.upgrade_module(
        session=session,
        actor=actor,
        hooks=state.hooks,
        state_dir=state.settings.state_dir,
        secret_key=state.settings.encryption_key(),
        name=name,
        source=source,
        pause_invalid=pause_invalid,
        min_interval=state.settings.min_schedule_interval_seconds,
        alert_interval=state.settings.alerts_default_interval_seconds,
    )
    return module_read(module)


@router.get("/{name}/versions", response_model=Page[ModuleVersionRead])
async def list_versions(
    name: ModuleName, session: SessionDep, paging: PageDep, _: Actor = Requires("modules:read")
) -> Page[ModuleVersionRead]:
    page, limit = paging
    module, result = await modules.list_versions(session=session, name=name, page=page, limit=limit)
    items = [
        ModuleVersionRead(
            id=v.id,
            version=v.version,
            current=v.version == module.version,
            bundle_sha256=v.bundle_sha256,
            bundle_size=v.bundle_size,
            source=v.source,
            code_path=v.code_path,
            created_at=v.created_at,
            manifest=v.manifest,
        )
        for v in result.items
    ]
    return Page(items=items, total=result.total, page=page, limit=limit)


@router.get("/{name}/job-types", response_model=Page[JobTypeRead])
async def list_job_types(
    name: ModuleName, session: SessionDep, paging: PageDep, _: Actor = Requires("modules:read")
) -> Page[JobTypeRead]:
    """The module's job types with their config schemas and defaults (for job creation forms)."""
    page, limit = paging
    items = modules.job_types(await modules.get_module(session=session, name=name))
    chosen = items[(page - 1) * limit : page * limit]
    return Page(items=[JobTypeRead.model_validate(i) for i in chosen], total=len(items), page=page, limit=limit)


@router.get("/{name}/config", response_model=ModuleConfigRead)
async def get_config(name: ModuleName, session: SessionDep, _: Actor = Requires("modules:read")) -> ModuleConfigRead:
    module = await modules.get_module(session=session, name=name)
    return _config_read(module)


@router.put("/{name}/config", response_model=ModuleConfigRead)
async def update_config(
    name: ModuleName,
    body: ModuleConfigUpdate,
    session: SessionDep,
    state: StateDep,
    actor: Actor = Requires("modules:write"),
) -> ModuleConfigRead:
    """Replace the configuration. Secrets are write-only: omitted or ******** keeps them, null removes them."""
    module = await modules.update_config(
        session=session, actor=actor, secret_key=state.settings.encryption_key(), name=name, config=body.config
    )
    return _config_read(module)


def _config_read(module: Module) -> ModuleConfigRead:
    schema = modules.config_schema(module)
    return ModuleConfigRead(
        config=modules.public_config(module), config_schema=schema, secret_fields=sorted(secret_fields(schema))
    )
