"""Jobs: instances of a module's job type with a schedule, policies and config.

Temporal is driven through the :class:`JobScheduler` the caller passes: the DB change is flushed
first, then the schedule is changed, then the caller commits. If Temporal fails the transaction
rolls back; if the commit fails after Temporal changed, the reconciler repairs the drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from registry.errors import Conflict, InvalidInput, NotFound
from registry.manifest import (
    MASK,
    apply_config_defaults,
    json_problem,
    mask_secrets,
    min_interval_seconds,
    secret_keys,
    unmask_secrets,
    validate_config,
    validate_cron,
    validate_timezone,
)
from registry.models import Execution, Job, JobState, Module, ModuleStatus
from registry.services import audit, slots
from registry.services.common import Actor, Page, escape_like, paginate
from registry.services.runs import job_type_definition, steps_of

OVERLAP_POLICIES = ("skip", "buffer_one", "allow_all", "cancel_other")
_INSTALLED = (ModuleStatus.INSTALLED.value, ModuleStatus.ENABLED.value, ModuleStatus.DISABLED.value)


class JobScheduler(Protocol):
    async def apply(self, job: Job, module: Module | None, steps: int = 1) -> str: ...

    async def delete(self, job_id: str) -> bool: ...


class NoScheduler:
    async def apply(self, job: Job, module: Module | None, steps: int = 1) -> str:
        return "none"

    async def delete(self, job_id: str) -> bool:
        return False


_UNSET: Any = object()
_NOTIFY_KEYS = {"on_failure": "onFailure", "on_success": "onSuccess", "on_timeout": "onTimeout"}


def normalise_notifications(value: dict[str, Any] | None) -> dict[str, list[str]]:
    """Accept ``on_failure`` (API style) and ``onFailure`` (manifest style); store the manifest style."""
    out: dict[str, list[str]] = {}
    for key, channels in (value or {}).items():
        name = _NOTIFY_KEYS.get(key, key)
        if name not in _NOTIFY_KEYS.values():
            raise InvalidInput(
                f"unknown notification outcome {key!r}; use on_failure, on_success or on_timeout",
                details=[{"loc": ["body", "notifications", key], "msg": "unknown outcome"}],
            )
        out[name] = [str(c) for c in channels or []]
    return out


async def get_job(*, session: AsyncSession, job_id: str) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


async def _module(session: AsyncSession, name: str, *, lock: bool = False) -> Module:
    stmt = select(Module).where(Module.name == name)
    if lock:
        stmt = stmt.with_for_update()
    module = await session.scalar(stmt)
    if module is None:
        raise NotFound(f"module {name} not found")
    return module


def _definition(module: Module, job_type: str) -> dict[str, Any]:
    definition = job_type_definition(module.manifest, job_type)
    if definition is None:
        names = [j.get("name") for j in module.manifest.get("jobs") or [] if isinstance(j, dict)]
        raise InvalidInput(
            f"module {module.name} has no job type {job_type!r}",
            details=[{"loc": ["body", "job_type"], "msg": f"one of {names}"}],
        )
    return definition


#: Default of ``AUTOPLAT_MIN_SCHEDULE_INTERVAL_SECONDS``.
MIN_SCHEDULE_INTERVAL_SECONDS = 60


def _check_schedule(schedule: str | None, timezone: str, min_interval: int | None) -> None:
    """A valid cron firing at most every ``min_interval`` seconds (None: not checked, the cron is
    unchanged) in a real IANA timezone."""
    if schedule is not None:
        problem = validate_cron(schedule)
        if problem:
            raise InvalidInput(
                f"invalid cron {schedule!r}: {problem}", details=[{"loc": ["body", "schedule"], "msg": problem}]
            )
        gap = min_interval_seconds(schedule)
        if min_interval is not None and gap < min_interval:
            raise InvalidInput(
                f"cron {schedule!r} fires every {gap} s; the shortest interval allowed is {min_interval} s "
                "(AUTOPLAT_MIN_SCHEDULE_INTERVAL_SECONDS)",
                details=[{"loc": ["body", "schedule"], "msg": f"fires every {gap} s", "minimum": min_interval}],
            )
    if not validate_timezone(timezone):
        raise InvalidInput(
            f"unknown timezone {timezone!r}", details=[{"loc": ["body", "timezone"], "msg": "IANA name"}]
        )


def split_config(
    schema: dict[str, Any], config: dict[str, Any], stored_secrets: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate ``config`` and split it into (plain config, secrets). Omitted or masked secret
    values keep what is stored (secrets are write-only)."""
    problem = json_problem(config)
    if problem is not None:
        pointer, reason = problem
        raise InvalidInput(
            f"config cannot be stored: {pointer or '/'}: {reason}",
            details=[{"loc": ["body", "config", *[p for p in pointer.split("/") if p]], "msg": reason}],
        )
    # A value holding a secret anywhere (a nested object's field, an array's items) is kept encrypted
    # as a whole; masked parts of it that the client sends back keep their stored values.
    holders = secret_keys(schema) if schema else set()
    props = (schema.get("properties") or {}) if schema else {}
    secrets = dict(stored_secrets)
    plain: dict[str, Any] = {}
    for key, value in config.items():
        if key in holders:
            if value != MASK:
                secrets[key] = unmask_secrets(props.get(key) or {}, value, stored_secrets.get(key))
        else:
            plain[key] = value
    if schema:
        issues = validate_config(schema, apply_config_defaults(schema, {**plain, **secrets}))
        if issues:
            raise InvalidInput(
                "config does not match the job type's config schema",
                details=[
                    {"loc": ["body", "config", *[p for p in i.path.split("/") if p]], "msg": i.message, "code": i.code}
                    for i in issues
                ],
            )
    return plain, secrets


def masked_config(job: Job, module: Module, secrets: dict[str, Any]) -> dict[str, Any]:
    definition = job_type_definition(module.manifest, job.job_type) or {}
    schema = definition.get("config") or {}
    merged = {**(job.config or {}), **secrets}
    return mask_secrets(schema, merged) if schema else merged


async def create_job(
    *,
    session: AsyncSession,
    scheduler: JobScheduler,
    crypto: Any,
    actor: Actor,
    module: str,
    job_type: str,
    name: str,
    description: str = "",
    schedule: Any = _UNSET,
    timezone: str | None = None,
    enabled: bool = True,
    timeout_seconds: int | None = None,
    retries: int | None = None,
    retry_backoff: dict[str, Any] | None = None,
    overlap: str | None = None,
    catchup_window_seconds: int | None = None,
    config: dict[str, Any] | None = None,
    event_triggers: list[Any] | None = None,
    notifications: dict[str, Any] | None = None,
    min_interval: int | None = MIN_SCHEDULE_INTERVAL_SECONDS,
    origin: str = "api",
    dst: dict[str, Any] | None = None,
    jitter_seconds: int | None = None,
) -> Job:
    mod = await _module(session, module)
    if mod.status not in _INSTALLED:
        raise Conflict(
            f"module {module} is {mod.status}: install it before creating jobs",
            details={"current_state": mod.status},
        )
    definition = _definition(mod, job_type)
    default_schedule = definition.get("schedule") or {}
    if schedule is _UNSET:
        schedule = default_schedule.get("cron")
    if timezone is None:
        timezone = default_schedule.get("timezone") or "UTC"
    _check_schedule(schedule, timezone, min_interval)
    policy = slots.check_dst(dst if dst is not None else default_schedule.get("dst"))
    jitter = jitter_seconds if jitter_seconds is not None else int(default_schedule.get("jitterSeconds") or 0)
    existing = await session.scalar(select(Job.id).where(Job.module_name == module, Job.name == name))
    if existing is not None:
        raise Conflict(f"module {module} already has a job named {name!r}")
    retries_def = definition.get("retries") or {}
    plain, secrets = split_config(definition.get("config") or {}, config or {}, {})
    job = Job(
        module_id=mod.id,
        module_name=module,
        job_type=job_type,
        name=name,
        description=description or definition.get("description", ""),
        schedule=schedule,
        timezone=timezone,
        enabled=enabled,
        timeout_seconds=timeout_seconds or int(definition.get("timeoutSeconds") or 300),
        retries=retries if retries is not None else max(int(retries_def.get("maxAttempts") or 1) - 1, 0),
        retry_backoff=retry_backoff or _backoff_from(retries_def),
        overlap=overlap or definition.get("overlap") or "skip",
        catchup_window_seconds=catchup_window_seconds or int(definition.get("catchupWindowSeconds") or 60),
        config=plain,
        secrets=crypto.encrypt(secrets) if secrets else None,
        event_triggers=event_triggers or [],
        notifications=normalise_notifications(notifications or definition.get("notifications")),
        origin=origin,
        created_by=actor.user_id,
        dst_nonexistent=policy["nonexistent"],
        dst_ambiguous=policy["ambiguous"],
        jitter_seconds=jitter,
    )
    session.add(job)
    await session.flush()
    await scheduler.apply(job, mod, len(steps_of(definition, module, job_type)))
    audit.record(
        session=session,
        actor=actor,
        action="job.create",
        target_type="job",
        target_id=job.id,
        details={"module": module, "job_type": job_type, "schedule": schedule, "origin": origin},
    )
    return job


# --- jobs from the manifest (createJob) and the upgrade check -------------------------------------

MANIFEST_ORIGIN = "manifest"


class _NoSecrets:
    """The codec of manifest jobs: the manifest never holds secrets (validate.py refuses them)."""

    def encrypt(self, values: dict[str, Any]) -> str:
        raise InvalidInput("createJob config cannot hold secret fields")

    def decrypt(self, token: str | None) -> dict[str, Any]:
        return {}


async def ensure_manifest_jobs(
    *, session: AsyncSession, module: Module, actor: Actor, min_interval: int | None = None
) -> list[Job]:
    """Create the job every ``createJob`` job type of ``module``'s manifest asks for, unless the
    module already has one of that job type from the manifest. Idempotent: called on every enable
    and on the upgrade of an enabled module. Schedules are left to the caller's lifecycle hook.

    A job deleted by a user is created again on the next enable or upgrade (the manifest asks for
    it); disable it instead to keep it from running. A name taken by another job: not created.
    """
    have = set(
        await session.scalars(select(Job.job_type).where(Job.module_id == module.id, Job.origin == MANIFEST_ORIGIN))
    )
    created: list[Job] = []
    for definition in module.manifest.get("jobs") or []:
        spec = definition.get("createJob") if isinstance(definition, dict) else None
        if not spec or definition["name"] in have:
            continue
        spec = spec if isinstance(spec, dict) else {}
        name = str(spec.get("name") or definition["name"])
        taken = await session.scalar(select(Job.id).where(Job.module_name == module.name, Job.name == name))
        if taken is not None:
            continue
        schedule: Any = _UNSET
        timezone = None
        dst = None
        jitter = None
        if "schedule" in spec:
            schedule = (spec["schedule"] or {}).get("cron")
            timezone = (spec["schedule"] or {}).get("timezone")
            dst = (spec["schedule"] or {}).get("dst")
            jitter = (spec["schedule"] or {}).get("jitterSeconds")
        job = await create_job(
            session=session,
            scheduler=NoScheduler(),
            crypto=_NoSecrets(),
            actor=actor,
            module=module.name,
            job_type=definition["name"],
            name=name,
            schedule=schedule,
            timezone=timezone,
            enabled=bool(spec.get("enabled", True)),
            config=dict(spec.get("config") or {}),
            min_interval=min_interval,
            origin=MANIFEST_ORIGIN,
            dst=dst,
            jitter_seconds=jitter,
        )
        created.append(job)
    return created


def config_problems(job: Job, manifest: dict[str, Any], secrets: dict[str, Any]) -> list[dict[str, str]]:
    """Why ``job`` (with its decrypted ``secrets``) cannot run under ``manifest``: its job type is
    gone, or its config fails the job type's config schema. Empty when it fits."""
    definition = job_type_definition(manifest, job.job_type)
    if definition is None:
        return [{"field": "job_type", "message": f"job type {job.job_type!r} is not in this version"}]
    schema = definition.get("config") or {}
    if not schema:
        return []
    issues = validate_config(schema, apply_config_defaults(schema, {**(job.config or {}), **secrets}))
    return [{"field": f"config{i.path}" if i.path else "config", "message": i.message} for i in issues]


class JobsInvalid(Conflict):
    """An upgrade would leave jobs whose config the new version refuses (409)."""

    code = "jobs_invalid"


async def check_jobs_against(
    *, session: AsyncSession, module: Module, manifest: dict[str, Any], version: str, crypto: Any
) -> list[dict[str, Any]]:
    """Every job of ``module`` that would not fit ``manifest``, with its problems."""
    invalid = []
    for job in await jobs_of_module(session=session, module_id=module.id):
        try:
            secrets = crypto.decrypt(job.secrets)
            problems = config_problems(job, manifest, secrets)
        except Conflict as exc:  # secrets unreadable with the current key
            problems = [{"field": "config", "message": exc.message}]
        if problems:
            invalid.append(
                {"id": job.id, "name": job.name, "job_type": job.job_type, "enabled": job.enabled, "problems": problems}
            )
    return invalid


def refuse_invalid_jobs(module: Module, version: str, invalid: list[dict[str, Any]]) -> None:
    names = ", ".join(
        f"{j['name']} ({'; '.join(p['field'] + ': ' + p['message'] for p in j['problems'])})" for j in invalid[:10]
    )
    raise JobsInvalid(
        f"cannot upgrade module {module.name} to {version}: {len(invalid)} job(s) would not fit its config "
        f"schema: {names}; fix them (PATCH /jobs/{{id}}) or upgrade with pause_invalid=true to disable them",
        details={"version": version, "invalid_jobs": invalid},
    )


async def pause_jobs(
    *, session: AsyncSession, actor: Actor, invalid: list[dict[str, Any]], module: Module, version: str
) -> None:
    """Disable each job of ``invalid`` with the reason (an upgrade asked with ``pause_invalid``)."""
    for entry in invalid:
        job = await get_job(session=session, job_id=entry["id"])
        reason = f"paused by the upgrade of {module.name} to {version}: " + "; ".join(
            f"{p['field']}: {p['message']}" for p in entry["problems"]
        )
        job.paused_reason = reason[:2000]
        if job.enabled:
            job.enabled = False
            job.revision += 1
        audit.record(
            session=session,
            actor=actor,
            action="job.pause",
            target_type="job",
            target_id=job.id,
            details={"reason": job.paused_reason, "version": version},
        )
    await session.flush()


def _require_runnable(job: Job, module: Module, crypto: Any) -> None:
    """Enabling a job whose stored config the module's current version refuses: 422, naming fields."""
    problems = config_problems(job, module.manifest, crypto.decrypt(job.secrets))
    if problems:
        raise InvalidInput(
            f"job {job.name} cannot be enabled: its config does not fit {module.name} {module.version}; "
            "fix it with PATCH /jobs/{id} first",
            details=[{"loc": p["field"].split("/"), "msg": p["message"]} for p in problems],
        )


def _backoff_from(retries: dict[str, Any]) -> dict[str, Any]:
    backoff = {
        "initial_interval_seconds": float(retries.get("initialIntervalSeconds") or 1),
        "backoff_coefficient": float(retries.get("backoffCoefficient") or 2),
    }
    if retries.get("maximumIntervalSeconds"):
        backoff["maximum_interval_seconds"] = float(retries["maximumIntervalSeconds"])
    return backoff


async def update_job(
    *,
    session: AsyncSession,
    scheduler: JobScheduler,
    crypto: Any,
    actor: Actor,
    job_id: str,
    changes: dict[str, Any],
    min_interval: int = MIN_SCHEDULE_INTERVAL_SECONDS,
) -> Job:
    job = await get_job(session=session, job_id=job_id)
    mod = await _module(session, job.module_name)
    definition = _definition(mod, job.job_type)
    # The ledger settles the slots so far under the schedule and state they had.
    await slots.settle(session=session, job=job, module=mod)
    if changes.get("enabled") is True and not job.enabled:
        await slots.settle(session=session, job=job, module=mod, until=datetime.now(UTC))
    if "name" in changes and changes["name"] != job.name:
        clash = await session.scalar(
            select(Job.id).where(Job.module_name == job.module_name, Job.name == changes["name"], Job.id != job.id)
        )
        if clash is not None:
            raise Conflict(f"module {job.module_name} already has a job named {changes['name']!r}")
    schedule = changes.get("schedule", job.schedule)
    timezone = changes["timezone"] if changes.get("timezone") is not None else job.timezone
    _check_schedule(schedule, timezone, min_interval if "schedule" in changes else None)
    if "config" in changes:
        stored = crypto.decrypt(job.secrets)
        plain, secrets = split_config(definition.get("config") or {}, changes.pop("config") or {}, stored)
        job.config = plain
        job.secrets = crypto.encrypt(secrets) if secrets else None
    if changes.get("notifications") is not None:
        changes["notifications"] = normalise_notifications(changes["notifications"])
    if changes.get("enabled") is True:
        if "config" not in changes and not job.enabled:
            _require_runnable(job, mod, crypto)
        job.paused_reason = None
    if changes.get("dst") is not None:
        policy = slots.check_dst({**slots.job_dst(job), **changes.pop("dst")})
        changes["dst_nonexistent"], changes["dst_ambiguous"] = policy["nonexistent"], policy["ambiguous"]
    changes.pop("dst", None)
    for key in (
        "name",
        "description",
        "schedule",
        "timezone",
        "enabled",
        "timeout_seconds",
        "retries",
        "retry_backoff",
        "overlap",
        "catchup_window_seconds",
        "event_triggers",
        "notifications",
        "dst_nonexistent",
        "dst_ambiguous",
        "jitter_seconds",
    ):
        if key in changes and (changes[key] is not None or key == "schedule"):
            setattr(job, key, changes[key])
    job.revision += 1
    await session.flush()
    await scheduler.apply(job, mod, len(steps_of(definition, job.module_name, job.job_type)))
    audit.record(
        session=session,
        actor=actor,
        action="job.update",
        target_type="job",
        target_id=job.id,
        details={"fields": sorted(changes)},
    )
    return job


async def set_enabled(
    *, session: AsyncSession, scheduler: JobScheduler, actor: Actor, job_id: str, enabled: bool, crypto: Any = None
) -> Job:
    job = await get_job(session=session, job_id=job_id)
    mod = await _module(session, job.module_name)
    if enabled and not job.enabled and crypto is not None:
        _require_runnable(job, mod, crypto)
    if enabled:
        job.paused_reason = None
    if job.enabled != enabled:
        # Slots so far keep the state they had: enabling settles the disabled time up to now.
        await slots.settle(session=session, job=job, module=mod, until=datetime.now(UTC) if enabled else None)
        job.enabled = enabled
        job.revision += 1
        await session.flush()
    definition = job_type_definition(mod.manifest, job.job_type) or {}
    steps = len(steps_of(definition, mod.name, job.job_type)) if definition else 1
    await scheduler.apply(job, mod, steps)
    audit.record(
        session=session,
        actor=actor,
        action="job.enable" if enabled else "job.disable",
        target_type="job",
        target_id=job.id,
    )
    return job


async def set_schedule_paused(
    *, session: AsyncSession, scheduler: JobScheduler, actor: Actor, job_id: str, paused: bool, note: str = ""
) -> Job:
    """Pause or resume a job's schedule: kept in Temporal (paused, with the note and who paused it),
    fires nothing while paused; its slots read ``skipped`` (paused). 409 for a job with no schedule."""
    job = await get_job(session=session, job_id=job_id)
    if not job.schedule:
        raise Conflict(
            f"job {job.name} has no schedule to {'pause' if paused else 'resume'}",
            details={"current_state": "unscheduled"},
        )
    mod = await _module(session, job.module_name)
    if paused:
        await slots.settle(session=session, job=job, module=mod)
        job.schedule_paused = True
        job.schedule_pause_note = note or None
        job.schedule_paused_by = actor.email or actor.user_id
        job.schedule_paused_at = datetime.now(UTC)
    elif job.schedule_paused:
        # The paused time's slots are skipped (paused), whatever comes after.
        await slots.settle(session=session, job=job, module=mod, until=datetime.now(UTC))
        job.schedule_paused = False
        job.schedule_pause_note = None
        job.schedule_paused_by = None
        job.schedule_paused_at = None
    await session.flush()
    definition = job_type_definition(mod.manifest, job.job_type) or {}
    steps = len(steps_of(definition, mod.name, job.job_type)) if definition else 1
    await scheduler.apply(job, mod, steps)
    audit.record(
        session=session,
        actor=actor,
        action="job.schedule_pause" if paused else "job.schedule_resume",
        target_type="job",
        target_id=job.id,
        details={"note": note} if note else None,
    )
    return job


async def delete_job(*, session: AsyncSession, scheduler: JobScheduler, actor: Actor, job_id: str) -> None:
    job = await get_job(session=session, job_id=job_id)
    await session.delete(job)
    await session.flush()
    await scheduler.delete(job_id)
    audit.record(
        session=session,
        actor=actor,
        action="job.delete",
        target_type="job",
        target_id=job_id,
        details={"module": job.module_name, "name": job.name},
    )


async def list_jobs(
    *,
    session: AsyncSession,
    page: int,
    limit: int,
    module: str | None = None,
    job_type: str | None = None,
    enabled: bool | None = None,
    search: str | None = None,
) -> Page[Job]:
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id)
    if module:
        stmt = stmt.where(Job.module_name == module)
    if job_type:
        stmt = stmt.where(Job.job_type == job_type)
    if enabled is not None:
        stmt = stmt.where(Job.enabled.is_(enabled))
    if search:
        like = f"%{escape_like(search.lower())}%"
        stmt = stmt.where(
            or_(func.lower(Job.name).like(like, escape="\\"), func.lower(Job.description).like(like, escape="\\"))
        )
    return await paginate(session, stmt, page=page, limit=limit)


#: What a job's ``last_execution`` shows (never the run's logs, config or result).
LAST_EXECUTION_COLUMNS = (Execution.id, Execution.job_id, Execution.status, Execution.trigger, Execution.created_at,
                          Execution.finished_at)  # fmt: skip


async def last_executions(*, session: AsyncSession, job_ids: list[str]) -> dict[str, Any]:
    """The latest run of each job (its summary columns), in one query whatever the page's size:
    per job, one backward step down ``ix_executions_job_created`` (a ``max()`` grouped by job would
    read every run of the page's jobs). Jobs never run are absent."""
    if not job_ids:
        return {}
    run = aliased(Execution)
    latest = (
        select(run.id)
        .where(run.job_id == Job.id)
        .order_by(run.created_at.desc(), run.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(*LAST_EXECUTION_COLUMNS).where(Execution.id.in_(select(latest).where(Job.id.in_(job_ids))))
    )
    return {row.job_id: row for row in rows}


async def last_execution(*, session: AsyncSession, job_id: str) -> Any:
    return (await last_executions(session=session, job_ids=[job_id])).get(job_id)


async def get_state(*, session: AsyncSession, job_id: str) -> tuple[Job, JobState | None]:
    """A job and its state document (``ctx.state``; ``None`` before the first write)."""
    job = await get_job(session=session, job_id=job_id)
    return job, await session.get(JobState, job_id, populate_existing=True)


def upcoming(job: Job, n: int = 5, after: datetime | None = None) -> list[datetime]:
    """The next ``n`` slots of the job's schedule, its daylight-saving policy applied."""
    if not job.schedule:
        return []
    try:
        zone = ZoneInfo(job.timezone or "UTC")
        return [
            s.at.astimezone(zone) for s in slots.next_slots(job.schedule, job.timezone, n, after, slots.job_dst(job))
        ]
    except (ValueError, KeyError):
        return []


async def jobs_of_module(*, session: AsyncSession, module_id: str) -> list[Job]:
    return list(await session.scalars(select(Job).where(Job.module_id == module_id)))


class SecretCodec:
    """Encrypts secret config values at rest (Fernet, key from settings)."""

    def __init__(self, key: str) -> None:
        self._key = key

    def encrypt(self, values: dict[str, Any]) -> str:
        from registry.crypto import encrypt_json

        return encrypt_json(self._key, values)

    def decrypt(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        from registry.crypto import DecryptionFailed, decrypt_json

        try:
            return decrypt_json(self._key, token)
        except DecryptionFailed as exc:
            raise Conflict(
                "stored secrets cannot be decrypted with the current AUTOPLAT_SECRET_KEY; set them again",
                details={"current_state": "secrets_unreadable"},
            ) from exc
