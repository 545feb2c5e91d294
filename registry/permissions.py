"""Roles and their permission strings (``resource:action``, with ``*`` wildcards)."""

from __future__ import annotations

from registry.models import Role

RESOURCES = ("modules", "jobs", "executions", "events", "users", "audit")

ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.admin: frozenset({"*:*"}),
    Role.operator: frozenset(
        f"{resource}:{action}"
        for resource in ("modules", "jobs", "executions", "events")
        for action in ("read", "write", "execute")
    ),
    Role.viewer: frozenset(f"{resource}:read" for resource in ("modules", "jobs", "executions", "events")),
}


def permissions_for(role: str) -> frozenset[str]:
    try:
        return ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return frozenset()


def has_permission(role: str, needed: str) -> bool:
    """True when ``role`` grants ``needed`` (``resource:action``)."""
    resource, _, action = needed.partition(":")
    for granted in permissions_for(role):
        g_resource, _, g_action = granted.partition(":")
        if g_resource in ("*", resource) and g_action in ("*", action):
            return True
    return False
