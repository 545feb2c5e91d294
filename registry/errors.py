"""Domain errors. The API maps each to one HTTP status and one error body (api/errors.py)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error the registry raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class InvalidInput(DomainError):
    """Input that is well-formed JSON but semantically wrong (422)."""

    code = "invalid_input"


class InvalidManifest(InvalidInput):
    code = "invalid_manifest"


class InvalidTransition(Conflict):
    """An illegal lifecycle transition; names the current state and what is allowed."""

    code = "invalid_transition"

    def __init__(self, *, entity: str, current: str, action: str, allowed: list[str]) -> None:
        super().__init__(
            f"cannot {action} {entity}: it is {current}; allowed actions: {', '.join(allowed) or 'none'}",
            details={"current_state": current, "action": action, "allowed_actions": allowed},
        )
        self.current = current
        self.allowed = allowed


class AuthenticationFailed(DomainError):
    code = "unauthorized"


class PermissionDenied(DomainError):
    code = "forbidden"


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after


class PayloadTooLarge(DomainError):
    code = "payload_too_large"


class ServiceUnavailable(DomainError):
    code = "unavailable"


class UpstreamTimeout(DomainError):
    """A synchronous call outlived its wait (504); the work goes on."""

    code = "timeout"
