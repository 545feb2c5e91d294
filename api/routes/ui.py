"""Module pages for the console (DESIGN decision 14): ``GET /ui/pages`` lists what the caller may
open, ``GET /ui/modules/{name}/pages/{page}`` gives one page. Pages come from the manifests of
enabled modules (``ui``, docs/manifest.md#ui); the console renders them, no module code runs in it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import Requires, SessionDep
from api.schemas.common import ERROR_RESPONSES
from registry.errors import NotFound
from registry.manifest import ui
from registry.models import Module, ModuleStatus
from registry.services.common import Actor

router = APIRouter(prefix="/ui", tags=["ui"], responses=ERROR_RESPONSES)

ModuleName = Annotated[str, Path(min_length=1, max_length=100, description="Module name")]
PageName = Annotated[str, Path(min_length=1, max_length=100, description="Page name")]


class PageLink(BaseModel):
    name: str
    title: str
    description: str | None = None


class ModulePages(BaseModel):
    module: str
    display_name: str
    pages: list[PageLink]


class PagesRead(BaseModel):
    modules: list[ModulePages]


class RouteAccess(BaseModel):
    method: str
    path: str = Field(description="The route's path under /api/v1/m/<module>, with its {parameters}")
    permission: str = Field(description="Least role the route asks for")
    allowed: bool = Field(description="Whether the caller's role may call it")


class PageRead(BaseModel):
    module: str
    display_name: str
    name: str
    title: str
    description: str | None = None
    refresh_seconds: int | None = None
    inputs: list[dict[str, Any]]
    panels: list[dict[str, Any]] = Field(
        description="As in the manifest (ui.pages[].panels), panels above the role left out"
    )
    routes: dict[str, RouteAccess] = Field(description='Every route the page names, by "METHOD /path"')


@router.get("/pages", response_model=PagesRead)
async def list_pages(session: SessionDep, actor: Actor = Requires("modules:read")) -> PagesRead:
    """The pages of enabled modules the caller's role may open, by module (the console's navigation)."""
    rows = await session.execute(
        select(Module.name, Module.display_name, Module.manifest)
        .where(Module.status == ModuleStatus.ENABLED.value)
        .order_by(Module.display_name, Module.name)
    )
    found = []
    for name, display_name, manifest in rows:
        pages = ui.visible_pages(manifest or {}, actor.role or "")
        if pages:
            found.append(ModulePages(module=name, display_name=display_name, pages=[PageLink(**p) for p in pages]))
    return PagesRead(modules=found)


@router.get("/modules/{name}/pages/{page}", response_model=PageRead)
async def get_page(
    name: ModuleName, page: PageName, session: SessionDep, actor: Actor = Requires("modules:read")
) -> PageRead:
    """One page of an enabled module, as the caller's role sees it."""
    row = (
        await session.execute(
            select(Module.display_name, Module.manifest).where(
                Module.name == name, Module.status == ModuleStatus.ENABLED.value
            )
        )
    ).first()
    found = ui.page_for(row.manifest or {}, page, actor.role or "") if row is not None else None
    if row is None or found is None:
        raise NotFound(f"no page {page!r} of an enabled module {name!r}")
    return PageRead(
        module=name,
        display_name=row.display_name,
        name=found["name"],
        title=found["title"],
        description=found.get("description"),
        refresh_seconds=found.get("refreshSeconds"),
        inputs=found.get("inputs") or [],
        panels=found["panels"],
        routes=found["routes"],
    )
