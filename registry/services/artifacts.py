"""Execution artifacts: files a run produced (screenshots, PDFs, downloads).

Bytes live in the registry database by default (``Artifact.data``: works when the API and the
workers run on different hosts), or under ``AUTOPLAT_ARTIFACTS_DIR`` when that is set (then every
API and worker host must see the same folder, e.g. a shared volume). Rows are keyed by
(execution, name): saving a name again (a retried step) replaces the earlier file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from registry.errors import InvalidInput, NotFound, PayloadTooLarge
from registry.models import Artifact, Execution

log = logging.getLogger(__name__)

#: File-name safe: no path separators, no leading dot.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


@dataclass(frozen=True)
class ArtifactData:
    """An artifact's row with its bytes, ready to serve."""

    artifact: Artifact
    data: bytes


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidInput(
            f"invalid artifact name {name!r}: use letters, digits, '.', '_' and '-' (at most 255, no '..')",
            details=[{"loc": ["name"], "msg": "invalid artifact name"}],
        )
    return name


def _fs_path(artifacts_dir: Path, relative: str) -> Path:
    root = artifacts_dir.resolve()
    path = (root / relative).resolve()
    if root not in path.parents:
        raise NotFound(f"artifact file {relative!r} is outside the artifacts folder")
    return path


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def save_artifact(
    *,
    session: AsyncSession,
    execution_id: str,
    name: str,
    content_type: str,
    data: bytes,
    step: str | None = None,
    artifacts_dir: Path | None = None,
    max_bytes: int | None = None,
) -> Artifact:
    """Store ``data`` as artifact ``name`` of the execution (replacing one of the same name).

    Raises:
        InvalidInput: the name is not a safe file name.
        PayloadTooLarge: ``data`` is larger than ``max_bytes``.
        NotFound: the execution does not exist.
    """
    check_name(name)
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"artifact {name!r} is {len(data)} bytes; the limit is {max_bytes}")
    if await session.get(Execution, execution_id) is None:
        raise NotFound(f"execution {execution_id} not found")
    digest = hashlib.sha256(data).hexdigest()
    row = await session.scalar(
        select(Artifact).where(Artifact.execution_id == execution_id, Artifact.name == name).with_for_update()
    )
    if row is None:
        row = Artifact(execution_id=execution_id, name=name)
        session.add(row)
    row.content_type = content_type
    row.size = len(data)
    row.sha256 = digest
    row.step = step
    if artifacts_dir is not None:
        relative = f"{execution_id}/{name}"
        # The file is written before the row commits; a failed commit leaves at most an orphan
        # file that the next save of this name overwrites, never a row without its file.
        _write_atomically(_fs_path(artifacts_dir, relative), data)
        row.storage, row.path, row.data = "fs", relative, None
    else:
        row.storage, row.path, row.data = "db", None, data
    await session.flush()
    return row


async def list_artifacts(*, session: AsyncSession, execution_id: str) -> list[Artifact]:
    """The artifacts of an execution, oldest first.

    Raises:
        NotFound: the execution does not exist.
    """
    if await session.get(Execution, execution_id) is None:
        raise NotFound(f"execution {execution_id} not found")
    rows = await session.scalars(
        select(Artifact).where(Artifact.execution_id == execution_id).order_by(Artifact.created_at, Artifact.name)
    )
    return list(rows)


async def get_artifact(
    *, session: AsyncSession, execution_id: str, name: str, artifacts_dir: Path | None = None
) -> ArtifactData:
    """One artifact with its bytes.

    Raises:
        NotFound: no such execution or artifact, or its file is gone.
    """
    row = await session.scalar(
        select(Artifact)
        .where(Artifact.execution_id == execution_id, Artifact.name == name)
        .options(undefer(Artifact.data))
    )
    if row is None:
        if await session.get(Execution, execution_id) is None:
            raise NotFound(f"execution {execution_id} not found")
        raise NotFound(f"execution {execution_id} has no artifact named {name!r}")
    if row.storage == "fs":
        if artifacts_dir is None or row.path is None:
            raise NotFound(f"artifact {name!r} is stored on disk but AUTOPLAT_ARTIFACTS_DIR is not set here")
        path = _fs_path(artifacts_dir, row.path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"the file of artifact {name!r} is missing") from None
        return ArtifactData(row, data)
    return ArtifactData(row, row.data or b"")


def remove_artifact_files(artifacts_dir: Path, relatives: list[str]) -> None:
    """Remove artifact files whose rows are gone (deleted runs); missing files are fine."""
    for relative in relatives:
        try:
            path = _fs_path(artifacts_dir, relative)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the run's folder, once empty
        except (OSError, InvalidInput):
            log.warning("could not remove artifact file %s", relative, exc_info=True)
