"""Execution artifacts (screenshots, PDFs, files a run produced): list and download."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Response

from api.deps import Requires, SessionDep, SettingsDep
from api.schemas.artifacts import ArtifactList, ArtifactRead
from api.schemas.common import ERROR_RESPONSES
from registry.services import artifacts
from registry.services.common import Actor

router = APIRouter(prefix="/executions", tags=["artifacts"], responses=ERROR_RESPONSES)


@router.get("/{execution_id}/artifacts", response_model=ArtifactList)
async def list_artifacts(
    execution_id: str, session: SessionDep, _: Actor = Requires("executions:read")
) -> ArtifactList:
    rows = await artifacts.list_artifacts(session=session, execution_id=execution_id)
    base = f"/api/v1/executions/{quote(execution_id, safe='')}/artifacts"
    return ArtifactList(
        execution_id=execution_id,
        items=[
            ArtifactRead(
                name=r.name,
                content_type=r.content_type,
                size=r.size,
                sha256=r.sha256,
                step=r.step,
                created_at=r.created_at,
                url=f"{base}/{quote(r.name, safe='')}",
            )
            for r in rows
        ],
    )


@router.get(
    "/{execution_id}/artifacts/{name}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The artifact's bytes"}},
)
async def download_artifact(
    execution_id: str, name: str, session: SessionDep, settings: SettingsDep, _: Actor = Requires("executions:read")
) -> Response:
    found = await artifacts.get_artifact(
        session=session, execution_id=execution_id, name=name, artifacts_dir=settings.artifacts_dir
    )
    return Response(
        content=found.data,
        media_type=found.artifact.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{found.artifact.name}"',
            "ETag": f'"{found.artifact.sha256}"',
            "X-Content-Type-Options": "nosniff",
        },
    )
