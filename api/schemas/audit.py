from __future__ import annotations

from datetime import datetime
from typing import Any

from api.schemas.common import Schema


class AuditRead(Schema):
    id: int
    at: datetime
    actor_id: str | None
    actor_email: str | None
    action: str
    target_type: str | None
    target_id: str | None
    outcome: str
    ip: str | None
    request_id: str | None
    details: dict[str, Any] | None
