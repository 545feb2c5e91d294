"""Platform settings, read once per process from ``AUTOPLAT_*`` environment variables."""

from __future__ import annotations

import functools
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Secrets that must never be accepted outside dev mode.
_PLACEHOLDER_SECRETS = {
    "secret",
    "changeme",
    "change-me",
    "password",
    "jwt-secret",
    "your-secret-key",
    "dev",
    "development",
    "test",
}
MIN_SECRET_LENGTH = 32


class InsecureSettings(RuntimeError):
    """Raised when the platform is started outside dev mode with unsafe settings."""


def default_state_dir() -> Path:
    return Path(os.environ.get("AUTOPLAT_STATE_DIR", ".state")).resolve()


class Settings(BaseSettings):
    """All settings of the platform. Names are part of the operator contract (docs/configuration.md)."""

    model_config = SettingsConfigDict(env_prefix="AUTOPLAT_", extra="ignore", populate_by_name=True)

    dev_mode: bool = False
    state_dir: Path = Field(default_factory=default_state_dir)

    database_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key and channel, so deployments can share one Redis.
    redis_prefix: str = Field(default="autoplat", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    temporal_address: str = Field(
        default="127.0.0.1:7233",
        validation_alias=AliasChoices("AUTOPLAT_TEMPORAL_ADDRESS", "TEMPORAL_ADDRESS"),
    )
    temporal_namespace: str = Field(
        default="default",
        validation_alias=AliasChoices("AUTOPLAT_TEMPORAL_NAMESPACE", "TEMPORAL_NAMESPACE"),
    )
    task_queue: str = "autoplat"
    temporal_tls: bool = False
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    temporal_ui_url: str = "http://127.0.0.1:8233"

    jwt_secret: SecretStr | None = None
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "autoplat"
    jwt_audience: str = "autoplat-api"
    access_token_ttl_seconds: int = Field(default=15 * 60, ge=30)
    refresh_token_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)

    #: Key for encrypting secret config values at rest (Fernet-compatible or any string; derived).
    secret_key: SecretStr | None = None

    admin_email: str | None = None
    admin_password: SecretStr | None = None
    allow_registration: bool = False

    login_max_failures: int = Field(default=5, ge=1)
    login_window_seconds: int = Field(default=900, ge=1)
    login_ip_max_failures: int = Field(default=50, ge=1)
    #: A client (address) that logged in to an account within this many days may still log in to it,
    #: with its own failure budget, while the account is throttled (0: no such pass).
    login_known_client_days: int = Field(default=30, ge=0, le=365)
    #: Proxies whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed (addresses or CIDRs,
    #: comma-separated). Empty: the TCP peer is the client, whatever the headers say.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: How long an API process may trust its cached check of a session (a revocation through the
    #: platform reaches every process at once through Redis; this bounds edits made behind its back).
    auth_cache_seconds: float = Field(default=10.0, ge=0, le=300)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        import ipaddress

        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for item in value:
                try:
                    ipaddress.ip_network(str(item), strict=False)
                except ValueError as exc:
                    raise ValueError(f"AUTOPLAT_TRUSTED_PROXIES: {item!r} is not an address or CIDR") from exc
        return value

    #: Heartbeat timeout of running steps: how fast cancellation and lost workers are noticed.
    heartbeat_timeout_seconds: int = Field(default=10, ge=1, le=600)
    #: Cap of the log kept on one execution (bytes); a marker notes truncation.
    execution_log_limit: int = Field(default=512 * 1024, ge=1024)
    #: How long ``?wait=true`` calls wait for a result before answering 504 / the execution.
    execute_wait_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: Interval of the periodic reconciler schedule (seconds).
    reconcile_interval_seconds: int = Field(default=300, ge=10)
    #: Run the periodic maintenance (reconciler, sweeper, retention) schedule from workers.
    maintenance_schedule: bool = True

    #: Largest accepted event payload (compact JSON bytes); larger ones answer 413.
    event_payload_max_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: Events older than this are deleted by the maintenance schedule (0 keeps them forever).
    event_retention_days: int = Field(default=30, ge=0)
    #: Finished executions (with logs and artifacts) older than this are deleted by the maintenance
    #: schedule (0 keeps them forever). Temporal's own history follows the namespace's retention.
    execution_retention_days: int = Field(default=90, ge=0)

    # --- services: HTTP, module storage, live logs (docs/services.md) ---
    #: Private destinations ctx.http may reach: ``off``, ``loopback`` (127.0.0.0/8, ::1) or ``private``
    #: (also RFC 1918 / unique-local / CGNAT). Link-local and cloud metadata stay refused.
    #: Unset: ``loopback`` in dev mode (the dev stack's demo source is on loopback), ``off`` otherwise.
    http_allow_private: Literal["off", "loopback", "private"] = "off"
    http_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: Retries of a request on connection errors, 429 and 5xx (exponential backoff with jitter).
    http_retries: int = Field(default=3, ge=0, le=20)
    #: Longest wait between two attempts (a longer Retry-After ends the retries).
    http_max_backoff_seconds: float = Field(default=30.0, gt=0, le=3600)
    http_max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    http_max_download_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    #: Largest JSON value of one module storage document / of one job's state (bytes).
    storage_max_value_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)

    # --- time series (docs/series.md) ---
    #: Most points one series read answers (``GET /series/query``, ``ctx.series``); more is a 422
    #: naming this limit and a coarser step.
    series_max_points: int = Field(default=100_000, ge=100, le=10_000_000)
    #: How far ahead of the platform's clock a written timestamp may be (seconds).
    series_max_future_seconds: int = Field(default=86400, ge=0, le=366 * 86400)
    #: Interval of the series rollup schedule (seconds).
    series_rollup_interval_seconds: int = Field(default=300, ge=10)
    #: Interval of the series retention schedule: partitions ahead, dropping expired ones (seconds).
    series_retention_interval_seconds: int = Field(default=3600, ge=60)

    # --- alerting (docs/alerting.md) ---
    #: How often the alert evaluator runs (seconds); each series / job rule is evaluated when its
    #: own interval (default ``alerts_default_interval_seconds``) has passed.
    alerts_tick_seconds: int = Field(default=10, ge=1, le=3600)
    #: Evaluation interval of a rule that names none (seconds).
    alerts_default_interval_seconds: int = Field(default=60, ge=1, le=86400)

    # --- observability (docs/observability.md) ---
    #: ``GET /metrics`` of the API: ``off``, ``token`` (``Authorization: Bearer <metrics_token>``) or
    #: ``open``. Unset: ``token`` when a token is set, ``open`` in dev mode, ``off`` otherwise.
    metrics: Literal["off", "token", "open"] | None = None
    metrics_token: SecretStr | None = None
    #: Port of a worker's own ``/metrics`` (platform and Temporal SDK metrics); 0: none. A port
    #: already taken (a second worker on the host) is logged and skipped.
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: Address a worker's metrics port binds (``0.0.0.0`` for a scraper on another host).
    worker_metrics_host: str = "127.0.0.1"
    #: ``text`` (human lines) or ``json`` (one object per line) for the API's and workers' logs.
    log_format: Literal["text", "json"] = "text"
    #: OpenTelemetry traces (``on``: exported over OTLP/HTTP as the ``OTEL_EXPORTER_OTLP_*`` variables
    #: say); ``off`` costs nothing.
    tracing: Literal["off", "on"] = "off"

    @model_validator(mode="after")
    def _metrics_token_needed(self) -> Settings:
        if self.metrics == "token" and not (self.metrics_token and self.metrics_token.get_secret_value()):
            raise ValueError("AUTOPLAT_METRICS=token needs AUTOPLAT_METRICS_TOKEN")
        return self

    def metrics_mode(self) -> Literal["off", "token", "open"]:
        if self.metrics is not None:
            return self.metrics
        if self.metrics_token is not None:
            return "token"
        return "open" if self.dev_mode else "off"

    # --- module code containment (docs/configuration.md, "Handler isolation") ---
    #: ``process``: handlers run in confined child processes of the worker (the default);
    #: ``inline``: in the worker's own interpreter (trusted development only).
    handler_isolation: Literal["process", "inline"] = "process"
    #: Handler processes kept started ahead of need, per worker.
    handler_pool_size: int = Field(default=2, ge=0, le=64)
    #: Handler processes running at once, per worker (more runs wait for one).
    handler_max_processes: int = Field(default=32, ge=1, le=1024)
    #: A handler process is replaced after this many runs.
    handler_max_runs: int = Field(default=200, ge=1)
    #: ... or when its resident memory is above this (MiB) after a run.
    handler_recycle_rss_mb: int = Field(default=512, ge=32)
    #: Memory (address space) of one run unless its job type's ``limits.memoryMb`` says otherwise.
    handler_memory_mb: int = Field(default=1024, ge=64)
    #: Cap of any run's memory, whatever its manifest asks (MiB).
    handler_memory_cap_mb: int = Field(default=4096, ge=64)
    #: CPU seconds of one run (0: as many as the step's timeout) unless ``limits.cpuSeconds`` says.
    handler_cpu_seconds: int = Field(default=0, ge=0)
    #: Cap of any run's CPU seconds.
    handler_cpu_cap_seconds: int = Field(default=3600, ge=1)
    #: Open files of a handler process.
    handler_open_files: int = Field(default=256, ge=16, le=65536)
    #: Largest message (result) a handler process may send back (bytes).
    handler_max_output_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    #: When the worker runs as root: the user handler processes run as (empty: root without capabilities).
    handler_user: str = ""
    #: Extra folders handlers may read and write (comma-separated), e.g. a shared drop folder.
    handler_write_paths: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Extra folders handlers may never read (the state folder and artifacts are always refused).
    handler_forbidden_paths: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("http_allow_private", mode="before")
    @classmethod
    def _allow_private(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            if value in ("", "0", "false", "no", "none"):
                return "off"
        return value

    @model_validator(mode="after")
    def _dev_mode_defaults(self) -> Settings:
        # Only a default: an explicit AUTOPLAT_HTTP_ALLOW_PRIVATE (even ``off``) wins in dev mode too.
        if self.dev_mode and "http_allow_private" not in self.model_fields_set:
            self.http_allow_private = "loopback"
        return self

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Largest ``limit`` of paginated lists; at most 200, the maximum the OpenAPI document publishes.
    page_max_limit: int = Field(default=200, ge=1, le=200)

    # --- what callers may send (docs/configuration.md, "Limits") ---
    #: Roles that may install module code (register, upload, install, enable, upgrade, uninstall,
    #: delete), comma-separated; admin always may.
    module_install_roles: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["admin"])
    #: Largest request body of a route without a larger cap of its own (bytes): 413 above it,
    #: before anything is parsed. Module bundle uploads and module routes have their own caps.
    request_max_body_bytes: int = Field(default=1024 * 1024, ge=4096, le=64 * 1024 * 1024)
    #: Module routes may answer ``text/html`` inline when their manifest says ``html: true``;
    #: off: HTML is always served as a sandboxed download.
    module_routes_allow_html: bool = False
    #: Shortest interval between two firings of a cron schedule (seconds); more frequent: 422.
    min_schedule_interval_seconds: int = Field(default=60, ge=1, le=86400)
    #: Backfills (docs/schedules.md): the most slots one backfill may run (more: 422 with the count),
    #: slot runs started per batch, seconds between batches, and the most of a backfill's runs going
    #: at once.
    backfill_max_slots: int = Field(default=10_000, ge=1, le=1_000_000)
    backfill_batch: int = Field(default=10, ge=1, le=1000)
    backfill_interval_seconds: float = Field(default=2.0, ge=0.1, le=3600)
    backfill_max_running: int = Field(default=20, ge=1, le=10_000)

    @field_validator("module_install_roles", mode="before")
    @classmethod
    def _install_roles(cls, value: object) -> object:
        from registry.permissions import validate_install_roles

        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError("a comma-separated list of roles")
        return validate_install_roles(str(v) for v in value)

    # --- services: notifications, browser, artifacts (docs/notifications.md, docs/browser.md) ---
    # (Webhook and Slack notifications and browser navigation follow ``http_allow_private`` too.)
    #: SMTP server of the built-in ``email`` channel (unset: email is unavailable).
    smtp_host: str | None = None
    #: Default: 25 with ``none``, 587 with ``starttls``, 465 with ``implicit``.
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "autoplat@localhost"
    smtp_tls: Literal["none", "starttls", "implicit"] = "starttls"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    #: CA bundle (PEM) that signs the SMTP server's certificate, if not in the system roots.
    smtp_ca_file: Path | None = None
    #: Recipients of the built-in ``email`` channel when a job's notifications name it.
    notify_email_to: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Named channels, JSON: ``{"ops": {"type": "webhook", "url": ..., "secret": ...}, ...}``.
    notify_channels: dict[str, dict[str, Any]] = Field(default_factory=dict, repr=False)
    #: Chromium executable for Playwright (default: /usr/bin/chromium, else ``chromium`` on PATH).
    browser_path: str | None = None
    #: Browser contexts (steps using the browser) open at once per worker; others wait.
    browser_max_contexts: int = Field(default=4, ge=1, le=64)
    #: Default timeout of browser navigation and actions (seconds).
    browser_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    #: Folder for execution artifacts; unset stores their bytes in the registry database.
    artifacts_dir: Path | None = None
    #: Largest artifact accepted (bytes).
    artifact_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)

    @field_validator("cors_origins", "notify_email_to", "handler_write_paths", "handler_forbidden_paths", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @cached_property
    def effective_database_url(self) -> str:
        """The configured DB URL, or the embedded SQLite file under the state folder."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{self.state_dir / 'autoplat.db'}"

    def jwt_key(self) -> str:
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.dev_mode:
            return _dev_secret(self.state_dir, "jwt-secret")
        raise InsecureSettings("AUTOPLAT_JWT_SECRET is not set")

    def encryption_key(self) -> str:
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        # Falling back to the JWT secret keeps single-secret deployments simple.
        return self.jwt_key()

    def check_secure(self) -> None:
        """Refuse unsafe settings outside dev mode, naming the offending setting."""
        if self.dev_mode:
            return
        problems = []
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        if not secret:
            problems.append("AUTOPLAT_JWT_SECRET is not set")
        elif _weak(secret):
            problems.append(f"AUTOPLAT_JWT_SECRET is too weak (at least {MIN_SECRET_LENGTH} random characters)")
        if self.secret_key is not None:
            key = self.secret_key.get_secret_value()
            if _weak(key):
                problems.append(f"AUTOPLAT_SECRET_KEY is too weak (at least {MIN_SECRET_LENGTH} random characters)")
        if self.admin_password is not None and len(self.admin_password.get_secret_value()) < 12:
            problems.append("AUTOPLAT_ADMIN_PASSWORD is too short (at least 12 characters)")
        if problems:
            raise InsecureSettings("refusing to start outside dev mode: " + "; ".join(problems))


def _weak(secret: str) -> bool:
    """Too short, a placeholder, or too little variety to be random (``"x" * 32``, ``"changeme" * 4``)."""
    lowered = secret.lower()
    if len(secret) < MIN_SECRET_LENGTH or lowered in _PLACEHOLDER_SECRETS:
        return True
    if len(set(secret)) < 10:
        return True
    return any(word in lowered and len(word) >= 6 for word in _PLACEHOLDER_SECRETS)


def normalise_database_url(url: str) -> str:
    """Map plain driver URLs onto the async drivers the platform uses."""
    for prefix, replacement in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(prefix):
            return replacement + url[len(prefix) :]
    return url


@functools.lru_cache(maxsize=16)
def _dev_secret(state_dir: Path, name: str) -> str:
    """A random secret persisted under the state folder (dev mode only)."""
    import secrets

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def get_settings() -> Settings:
    return Settings()
