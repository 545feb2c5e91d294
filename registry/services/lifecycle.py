"""The hook interface module lifecycle transitions call, inside their transaction.

The jobs capability implements it with Temporal schedules (pause on disable, resume on enable,
delete on uninstall) and resolves the open incidents of the alert rules a transition removed
(registry/services/module_alerts.py). A hook that raises aborts the transition: the DB change is rolled back and
the module keeps its previous state; Temporal-side leftovers are repaired by the reconciler.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from registry.models import Module


class LifecycleHooks(Protocol):
    async def module_enabled(self, *, session: AsyncSession, module: Module) -> None: ...

    async def module_disabled(self, *, session: AsyncSession, module: Module) -> None: ...

    async def module_uninstalled(self, *, session: AsyncSession, module: Module) -> None: ...

    async def module_upgraded(self, *, session: AsyncSession, module: Module, previous_version: str) -> None: ...

    async def incidents_orphaned(self, *, session: AsyncSession, workflow_ids: list[str], reason: str) -> None:
        """Resolve the open incidents (by workflow id) of alert rules the transition removed; called
        only when there are some."""


class NoHooks:
    """Hooks that do nothing (registry-only deployments and unit tests)."""

    async def module_enabled(self, *, session: AsyncSession, module: Module) -> None:
        return None

    async def module_disabled(self, *, session: AsyncSession, module: Module) -> None:
        return None

    async def module_uninstalled(self, *, session: AsyncSession, module: Module) -> None:
        return None

    async def module_upgraded(self, *, session: AsyncSession, module: Module, previous_version: str) -> None:
        return None

    async def incidents_orphaned(self, *, session: AsyncSession, workflow_ids: list[str], reason: str) -> None:
        return None
