"""The wire between a worker and its handler processes: length-prefixed JSON frames on a socket.

JSON, never pickle: the other end runs module code, so nothing it sends may become an object in
the worker by itself. Both ends use :func:`dumps`, which turns the values handlers commonly return
(dataclasses, pydantic models, datetimes, UUIDs, sets, tuples) into JSON, as Temporal's JSON
converter would, and refuses the rest with a clear message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import json
import struct
import uuid
from decimal import Decimal
from typing import Any

_HEADER = struct.Struct(">I")


class FrameTooLarge(Exception):
    """The peer announced a frame larger than allowed."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes over the limit of {limit}")
        self.size = size
        self.limit = limit


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serialisable")


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON (NaN and infinities kept, as Temporal's converter keeps them)."""
    return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False).encode()


def frame(message: dict[str, Any]) -> bytes:
    data = dumps(message)
    return _HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, limit: int) -> dict[str, Any] | None:
    """The next message, or ``None`` at the end of the stream.

    Raises:
        FrameTooLarge: The announced size is over ``limit`` (nothing of it is read).
        ValueError: The frame is not a JSON object.
    """
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError:
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise FrameTooLarge(size, limit)
    try:
        data = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a frame must hold a JSON object")
    return message
