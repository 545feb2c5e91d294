from __future__ import annotations

from datetime import datetime

from api.schemas.common import Schema


class ArtifactRead(Schema):
    name: str
    content_type: str
    size: int
    sha256: str
    step: str | None
    created_at: datetime
    #: Download link (same authentication as the API).
    url: str


class ArtifactList(Schema):
    execution_id: str
    items: list[ArtifactRead]
