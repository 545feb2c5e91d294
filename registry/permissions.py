"""Roles and their permission strings (``resource:action``, with ``*`` wildcards).

``modules:install`` is apart from ``modules:write``: it changes which code the platform runs
(register / upload, install, enable, upgrade, uninstall, delete), and code runs with the
worker's rights. Admins hold it always; other roles only when named in
``AUTOPLAT_MODULE_INSTALL_ROLES`` (default ``admin``). Operators keep ``modules:write``:
configuring and disabling a module, which never brings new code in.
"""

from __future__ import annotations

from collections.abc import Iterable

from registry.models import Role

RESOURCES = ("modules", "jobs", "executions", "events", "users", "audit", "series", "alerts")
#: Installing code: see the module docstring.
INSTALL = "modules:install"
#: Roles holding :data:`INSTALL` unless the setting says otherwise.
DEFAULT_INSTALL_ROLES: tuple[str, ...] = (Role.admin.value,)

#: Time series are read by every role (``series:read``); modules write them from their jobs only.
SERIES_READ = "series:read"
#: Alerting (docs/alerting.md): every role reads rules and incidents; operators and admins write
#: rules and acknowledge / resolve / dismiss incidents.
ALERTS_READ, ALERTS_WRITE = "alerts:read", "alerts:write"

ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.admin: frozenset({"*:*"}),
    Role.operator: frozenset(
        f"{resource}:{action}"
        for resource in ("modules", "jobs", "executions", "events")
        for action in ("read", "write", "execute")
    )
    | {SERIES_READ, ALERTS_READ, ALERTS_WRITE},
    Role.viewer: frozenset(f"{resource}:read" for resource in ("modules", "jobs", "executions", "events"))
    | {SERIES_READ, ALERTS_READ},
}


def permissions_for(role: str, *, install_roles: Iterable[str] = DEFAULT_INSTALL_ROLES) -> frozenset[str]:
    """What ``role`` holds; ``install_roles`` (``AUTOPLAT_MODULE_INSTALL_ROLES``) adds :data:`INSTALL`."""
    try:
        granted = ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return frozenset()
    return granted | {INSTALL} if role in set(install_roles) else granted


def has_permission(role: str, needed: str, *, install_roles: Iterable[str] = DEFAULT_INSTALL_ROLES) -> bool:
    """True when ``role`` grants ``needed`` (``resource:action``)."""
    resource, _, action = needed.partition(":")
    for granted in permissions_for(role, install_roles=install_roles):
        g_resource, _, g_action = granted.partition(":")
        if g_resource in ("*", resource) and g_action in ("*", action):
            return True
    return False


def validate_install_roles(roles: Iterable[str]) -> list[str]:
    """The roles of ``AUTOPLAT_MODULE_INSTALL_ROLES``, checked; admin is always among them."""
    known = {r.value for r in Role}
    out: list[str] = []
    for role in roles:
        name = role.strip().lower()
        if name not in known:
            raise ValueError(f"unknown role {name!r} in AUTOPLAT_MODULE_INSTALL_ROLES; use {', '.join(sorted(known))}")
        if name not in out:
            out.append(name)
    if Role.admin.value not in out:
        out.insert(0, Role.admin.value)
    return out
