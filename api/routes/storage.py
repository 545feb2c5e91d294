"""Read access to a module's storage for operators (module data may be sensitive: not for viewers)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from api.deps import Requires, SessionDep
from api.schemas.common import ERROR_RESPONSES
from registry.errors import NotFound
from registry.services import modules
from registry.services import storage as store
from registry.services.common import Actor

router = APIRouter(prefix="/modules", tags=["storage"], responses=ERROR_RESPONSES)

ModuleName = Annotated[str, Path(min_length=1, max_length=100, description="Module name")]


class DocumentRead(BaseModel):
    key: str
    value: Any
    expires_at: datetime | None
    updated_at: datetime


class DocumentPage(BaseModel):
    items: list[DocumentRead]
    #: Pass as ``after`` to get the next page (``None``: this was the last one).
    next_after: str | None


def _read(row: Any) -> DocumentRead:
    return DocumentRead(key=row.key, value=row.value, expires_at=row.expires_at, updated_at=row.updated_at)


#: Keys never hold control characters (PostgreSQL text cannot even hold NUL): refused with a 422.
NO_CONTROL = r"^[^\x00-\x1f]*$"


@router.get("/{name}/storage", response_model=DocumentPage)
async def list_documents(
    name: ModuleName,
    session: SessionDep,
    prefix: Annotated[str, Query(max_length=512, pattern=NO_CONTROL)] = "",
    after: Annotated[
        str | None, Query(max_length=512, pattern=NO_CONTROL, description="Key after which the page starts")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    _: Actor = Requires("modules:write"),
) -> DocumentPage:
    """The module's live documents in key order (keyset pagination with ``after``)."""
    module = await modules.get_module(session=session, name=name)
    rows = await store.query_documents(
        session=session, module_id=module.id, prefix=prefix, where={}, limit=limit + 1, after=after
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return DocumentPage(items=[_read(r) for r in rows], next_after=rows[-1].key if more and rows else None)


@router.get("/{name}/storage/{key:path}", response_model=DocumentRead)
async def get_document(
    name: ModuleName,
    key: Annotated[str, Path(max_length=512, pattern=NO_CONTROL)],
    session: SessionDep,
    _: Actor = Requires("modules:write"),
) -> DocumentRead:
    module = await modules.get_module(session=session, name=name)
    row = await store.get_document(session=session, module_id=module.id, key=key)
    if row is None:
        raise NotFound(f"module {name!r} has no document {key!r}", details={"module": name, "key": key})
    return _read(row)
