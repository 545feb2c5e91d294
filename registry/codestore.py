"""Module code storage: bundles kept in the database, unpacked into immutable folders.

A module's code travels as one archive stored with its version (``ModuleVersion.bundle``), so API
and worker processes on different hosts share it without a shared filesystem. Registering from a
server folder packs it with :func:`pack_folder` (a deterministic ``.tar.gz``); an uploaded
``.zip`` / ``.tar.gz`` bundle is kept as uploaded. Every process unpacks a version on first use
with :func:`materialize` into ``<state_dir>/code/<module>/<version>-<sha256[:12]>``: one folder per
(module, version, content), never modified afterwards, which running executions import from.

:func:`safe_extract` is the only way an archive is unpacked. It refuses absolute paths, ``..``
segments, links, devices, encrypted entries and archives over the size or file-count limits,
before writing anything.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from registry.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "EXCLUDED_DIRS",
    "MAX_BUNDLE_BYTES",
    "MAX_FILES",
    "MAX_TAR_META_BYTES",
    "MAX_UNPACKED_BYTES",
    "archive_kind",
    "code_folder",
    "materialize",
    "pack_folder",
    "remove_module_code",
    "safe_extract",
    "sha256_hex",
]

MiB = 1024 * 1024
#: Largest archive accepted (an upload, or a packed server folder).
MAX_BUNDLE_BYTES = 20 * MiB
#: Largest total size of the files in an archive, once unpacked.
MAX_UNPACKED_BYTES = 100 * MiB
#: Most entries (files and folders) an archive may hold.
MAX_FILES = 5000

#: Folders never packed from a server folder: caches, VCS metadata, virtual environments.
EXCLUDED_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".svn", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")
#: Finder metadata in zips made on macOS; skipped when unpacking.
_IGNORED_ROOTS = frozenset({"__MACOSX"})
_CHUNK = 1024 * 1024
_MODULE_RE = re.compile(r"[a-z][a-z0-9-]{0,99}")
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,255}")
#: Longest version kept in a folder name (file names are limited to 255 bytes). Truncating is safe:
#: the folder name also carries the content digest, and equal content may share a folder.
_MAX_VERSION_IN_NAME = 200
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


# --- packing -------------------------------------------------------------------------------------


def _walk(root: Path, rel: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], os.DirEntry[str]]]:
    """Entries under ``root / rel`` in name order, skipping excluded folders and files."""
    with os.scandir(root.joinpath(*rel)) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        parts = (*rel, entry.name)
        shown = "/".join(parts)
        if entry.is_symlink():
            raise InvalidInput(f"{shown}: symbolic links are not allowed in a module folder", details={"entry": shown})
        if entry.is_dir(follow_symlinks=False):
            if entry.name in EXCLUDED_DIRS:
                continue
            yield parts, entry
            yield from _walk(root, parts)
        elif entry.is_file(follow_symlinks=False):
            if entry.name.endswith(_EXCLUDED_SUFFIXES):
                continue
            yield parts, entry
        else:
            raise InvalidInput(
                f"{shown}: only regular files and folders can be packed (found a device, FIFO or socket)",
                details={"entry": shown},
            )


def pack_folder(path: Path) -> tuple[bytes, str]:
    """Pack a module folder as a deterministic ``.tar.gz``; returns ``(data, sha256 hex)``.

    The same content always gives the same bytes: entries in name order, mtime 0, owner root,
    modes 0644 / 0755. ``__pycache__``, ``.git`` (and other VCS/cache folders, see
    :data:`EXCLUDED_DIRS`) and ``*.pyc`` are left out.

    Raises:
        InvalidInput: the folder doesn't exist or holds a symbolic link, device, FIFO or socket.
        PayloadTooLarge: over :data:`MAX_FILES` entries, :data:`MAX_UNPACKED_BYTES` of files or
            :data:`MAX_BUNDLE_BYTES` packed.
    """
    root = Path(path)
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a folder", details={"path": str(root)})
    buffer = io.BytesIO()
    count = total = 0
    # GzipFile with mtime=0 and no file name: the gzip header is constant too.
    with (
        gzip.GzipFile(filename="", fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for parts, entry in _walk(root):
            count += 1
            if count > MAX_FILES:
                raise PayloadTooLarge(f"the module folder holds more than {MAX_FILES} files and folders")
            info = tarfile.TarInfo("/".join(parts))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            st = entry.stat(follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            info.size = st.st_size
            total += st.st_size
            if total > MAX_UNPACKED_BYTES:
                raise PayloadTooLarge(f"the module folder holds more than {_mib(MAX_UNPACKED_BYTES)} of files")
            with open(entry.path, "rb") as fh:
                tar.addfile(info, fh)
    data = buffer.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise PayloadTooLarge(f"the module folder packs to {_mib(len(data))}; the limit is {_mib(MAX_BUNDLE_BYTES)}")
    return data, sha256_hex(data)


# --- unpacking -----------------------------------------------------------------------------------


def archive_kind(data: bytes) -> str | None:
    """``"tar.gz"`` or ``"zip"`` from the magic bytes, or None for anything else."""
    if data[:2] == b"\x1f\x8b":
        return "tar.gz"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return None


@dataclass
class _Member:
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    executable: bool
    open: Callable[[], IO[bytes]]

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def _refuse(name: str, why: str) -> InvalidInput:
    return InvalidInput(f"bundle entry {name!r} refused: {why}", details={"entry": name, "reason": why})


def _parts(raw: str) -> tuple[str, ...]:
    """The safe relative path of an archive entry name, or an InvalidInput naming the problem."""
    shown = raw[:200]
    if "\x00" in raw:
        raise _refuse(shown, "NUL character in the name")
    if "\\" in raw:
        raise _refuse(shown, "backslash in the name (use / as separator)")
    if raw.startswith("/") or _DRIVE_RE.match(raw):
        raise _refuse(shown, "absolute path")
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _refuse(shown, "path traversal ('..' segment)")
    return parts


class _Budget:
    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes = self.files = 0

    def entry(self, size: int) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise PayloadTooLarge(f"the bundle holds more than {self.max_files} entries")
        self.add(size)

    def add(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise PayloadTooLarge(f"the bundle unpacks to more than {_mib(self.max_bytes)}")


#: Largest metadata entry of a tar (GNU long name / long link, PAX header): real ones are a few
#: hundred bytes. ``tarfile`` reads such an entry whole into memory, so it is checked first.
MAX_TAR_META_BYTES = 64 * 1024
#: Entry types whose data ``tarfile`` reads into memory as metadata of the next entry.
_TAR_META_TYPES = frozenset({b"L", b"K", b"x", b"g", b"X"})
_BLOCK = 512
#: Regular file entries, whose sizes count against the unpacked limit.
_TAR_FILE_TYPES = frozenset({b"0", b"\x00", b"7"})
#: Headers and metadata allowed on top of the files' bytes in the decompressed stream.
_TAR_OVERHEAD_BYTES = 16 * MiB


def _tar_number(field: bytes) -> int:
    """A tar header number: NUL/space-terminated octal, or base-256 when the first bit is set."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\x00", 1)[0].strip()
    return int(text, 8) if text else 0


def _check_tar_headers(data: bytes, max_bytes: int) -> None:
    """Walk the headers of a ``.tar.gz`` without keeping any entry's data: refuse a metadata entry
    over :data:`MAX_TAR_META_BYTES`, or entries declaring more than ``max_bytes`` in all, before
    ``tarfile`` would buffer them. The decompressed stream is read in bounded chunks."""
    declared = consumed = 0
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        while True:
            header = stream.read(_BLOCK)
            if len(header) < _BLOCK or header == b"\x00" * _BLOCK:
                return  # the end (or a truncated archive, which tarfile reports)
            try:
                size = _tar_number(header[124:136])
            except ValueError as exc:
                raise InvalidInput("the bundle is not a valid tar.gz archive: bad size field in a header") from exc
            if size < 0:
                raise InvalidInput("the bundle is not a valid tar.gz archive: negative size in a header")
            kind = header[156:157]
            if kind in _TAR_META_TYPES and size > MAX_TAR_META_BYTES:
                raise PayloadTooLarge(
                    f"the bundle has a tar metadata entry (long name or PAX header) of {size} bytes; "
                    f"the limit is {MAX_TAR_META_BYTES}",
                    details={"size": size, "limit": MAX_TAR_META_BYTES},
                )
            if kind in _TAR_FILE_TYPES:
                declared += size
            remaining = -(-size // _BLOCK) * _BLOCK
            consumed += _BLOCK + remaining
            if declared > max_bytes or consumed > max_bytes + _TAR_OVERHEAD_BYTES:
                raise PayloadTooLarge(f"the bundle unpacks to more than {_mib(max_bytes)}")
            while remaining:
                chunk = stream.read(min(remaining, _CHUNK))
                if not chunk:
                    return
                remaining -= len(chunk)


def _tar_members(data: bytes, budget: _Budget) -> list[_Member]:
    _check_tar_headers(data, budget.max_bytes)
    tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")  # noqa: SIM115 - members open it lazily
    members: list[_Member] = []
    # Iterating reads one header at a time; the budget is checked before the next member's data
    # is decompressed, so a gzip bomb costs at most the limit.
    for info in tar:
        name = info.name
        if info.issym():
            raise _refuse(name, "symbolic link")
        if info.islnk():
            raise _refuse(name, "hard link")
        if info.ischr() or info.isblk():
            raise _refuse(name, "device file")
        if info.isfifo():
            raise _refuse(name, "FIFO")
        if info.issparse() or not (info.isreg() or info.isdir()):
            raise _refuse(name, "unsupported entry type")
        parts = _parts(name)
        budget.entry(0 if info.isdir() else info.size)

        def opener(member: tarfile.TarInfo = info) -> IO[bytes]:
            fh = tar.extractfile(member)
            if fh is None:  # pragma: no cover - regular members always have data
                raise _refuse(member.name, "unreadable entry")
            return fh

        members.append(_Member(parts, info.isdir(), info.size, bool(info.mode & 0o111), opener))
    return members


def _zip_members(data: bytes, budget: _Budget) -> list[_Member]:
    archive = zipfile.ZipFile(io.BytesIO(data))
    members: list[_Member] = []
    for info in archive.infolist():
        name = info.filename
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        if stat.S_ISLNK(mode):
            raise _refuse(name, "symbolic link")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _refuse(name, "device, FIFO or socket")
        if info.flag_bits & 0x1:
            raise _refuse(name, "encrypted entry")
        parts = _parts(name)
        budget.entry(0 if info.is_dir() else info.file_size)

        def opener(member: zipfile.ZipInfo = info) -> IO[bytes]:
            return archive.open(member)

        members.append(_Member(parts, info.is_dir(), info.file_size, bool(mode & 0o111), opener))
    return members


def _normalise(members: list[_Member]) -> list[_Member]:
    """Drop Finder metadata and the root entry, strip a single top folder, refuse clashing names."""
    members = [m for m in members if m.parts and m.parts[0] not in _IGNORED_ROOTS]
    files = {m.parts for m in members if not m.is_dir}
    tops = {m.parts[0] for m in members}
    if ("manifest.json",) not in files and len(tops) == 1:
        (top,) = tops
        if (top, "manifest.json") in files:
            members = [
                _Member(m.parts[1:], m.is_dir, m.size, m.executable, m.open) for m in members if len(m.parts) > 1
            ]
    seen_files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for m in members:
        for i in range(1, len(m.parts)):
            dirs.add(m.parts[:i])
        if m.is_dir:
            dirs.add(m.parts)
        elif m.parts in seen_files:
            raise _refuse(m.name, "duplicate entry")
        else:
            seen_files.add(m.parts)
    for parts in seen_files & dirs:
        raise _refuse("/".join(parts), "a file and a folder share this name")
    return members


def _write(member: _Member, target: Path, budget: _Budget) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with member.open() as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > member.size:
                raise _refuse(member.name, "more data than its declared size")
            dst.write(chunk)
    budget.add(written)
    target.chmod(0o755 if member.executable else 0o644)


def safe_extract(data: bytes, dest: Path, *, max_bytes: int, max_files: int) -> None:
    """Unpack a ``.tar.gz`` / ``.tgz`` or ``.zip`` archive (detected by its magic bytes) into ``dest``.

    Every entry is checked before anything is written. When the archive has no ``manifest.json``
    at its root but a single top-level folder holding one (``my-module/manifest.json``), that
    folder is stripped. ``dest`` must not exist; it is created, and removed again on failure.

    Raises:
        InvalidInput: not one of the accepted formats, a corrupt archive, an absolute path, a
            ``..`` segment, a symbolic or hard link, a device or FIFO, an encrypted entry, or
            clashing names.
        PayloadTooLarge: more than ``max_files`` entries or ``max_bytes`` unpacked.
    """
    kind = archive_kind(data)
    if kind is None:
        raise InvalidInput("the bundle is not a .zip or .tar.gz archive", details={"accepted": ["zip", "tar.gz"]})
    budget = _Budget(max_bytes, max_files)
    dest = Path(dest)
    created = False
    try:
        members = _tar_members(data, budget) if kind == "tar.gz" else _zip_members(data, budget)
        members = _normalise(members)
        dest.mkdir(parents=True)
        created = True
        root = dest.resolve()
        written = _Budget(max_bytes, max_files)
        for member in members:
            target = dest.joinpath(*member.parts)
            if not target.resolve().is_relative_to(root):  # belt and braces: no links exist in dest
                raise _refuse(member.name, "resolves outside the destination")
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
            else:
                _write(member, target, written)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        _cleanup(dest, created)
        raise InvalidInput(f"the bundle is not a valid {kind} archive: {exc}") from exc
    except (InvalidInput, PayloadTooLarge):
        _cleanup(dest, created)
        raise
    except OSError as exc:
        _cleanup(dest, created)
        if not created and dest.exists():
            raise
        # gzip.BadGzipFile is an OSError; so are names too long for the filesystem. The message
        # never names the host's folders: only the error's own text, without its file names.
        reason = exc.strerror or (str(exc.args[0]) if exc.args else type(exc).__name__)
        raise InvalidInput(f"the bundle cannot be unpacked: {reason}") from exc
    except BaseException:
        _cleanup(dest, created)
        raise


def _cleanup(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)


# --- materialized folders ------------------------------------------------------------------------


def code_folder(state_dir: Path, module: str, version: str, sha256: str) -> Path:
    """Where :func:`materialize` puts a version's code: ``<state_dir>/code/<module>/<version>-<sha[:12]>``."""
    if not _MODULE_RE.fullmatch(module) or not _VERSION_RE.fullmatch(version) or ".." in version:
        raise ValueError(f"unsafe module name or version: {module!r} {version!r}")
    if not _SHA_RE.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return Path(state_dir) / "code" / module / f"{version[:_MAX_VERSION_IN_NAME]}-{sha256[:12]}"


def materialize(state_dir: Path, module: str, version: str, sha256: str, data: bytes | None = None) -> Path:
    """Return the immutable code folder of a module version, unpacking ``data`` there if absent.

    Idempotent and safe when several processes race: each unpacks into its own temporary folder
    and renames it into place; the first rename wins and the others discard their copy.

    Raises:
        FileNotFoundError: the folder is absent and no ``data`` was given (load the bundle and retry).
        InvalidInput: ``data`` doesn't match ``sha256``, or cannot be unpacked.
    """
    target = code_folder(state_dir, module, version, sha256)
    if target.is_dir():
        return target
    if data is None:
        raise FileNotFoundError(target)
    if sha256_hex(data) != sha256:
        raise InvalidInput(f"the stored bundle of {module} {version} does not match its sha256")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:12]}"
    try:
        safe_extract(data, tmp, max_bytes=MAX_UNPACKED_BYTES, max_files=MAX_FILES)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def remove_module_code(state_dir: Path, module: str) -> None:
    """Delete every materialized version of a module on this host (after the module is deleted)."""
    if not _MODULE_RE.fullmatch(module):
        raise ValueError(f"unsafe module name: {module!r}")
    shutil.rmtree(Path(state_dir) / "code" / module, ignore_errors=True)
