"""Code bundles: deterministic packing, safe unpacking, uploads through the API, and refusals that
leave nothing behind (no module row, no version row, no file under the code folder)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from registry import codestore
from registry.errors import InvalidInput, PayloadTooLarge
from registry.models import ModuleVersion

MODULES = "/api/v1/modules"
LIMITS = {"max_bytes": codestore.MAX_UNPACKED_BYTES, "max_files": codestore.MAX_FILES}


def tar_gz(entries: list[tuple[str, bytes | None, dict]] | dict[str, bytes]) -> bytes:
    """A .tar.gz of (name, data or None for a folder, TarInfo attributes) entries."""
    if isinstance(entries, dict):
        entries = [(n, d, {}) for n, d in entries.items()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data, attrs in entries:
            info = tarfile.TarInfo(name)
            if data is None and "type" not in attrs:
                info.type = tarfile.DIRTYPE
            for key, value in attrs.items():
                setattr(info, key, value)
            info.size = len(data or b"") if "size" not in attrs else attrs["size"]
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buffer.getvalue()


def module_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- packing -----------------------------------------------------------------------------------------


def test_pack_folder_is_deterministic_and_skips_caches(make_folder, tmp_path):
    folder = make_folder()
    (folder / "demo_mod" / "__pycache__").mkdir()
    (folder / "demo_mod" / "__pycache__" / "jobs.cpython-311.pyc").write_bytes(b"x")
    (folder / "demo_mod" / "old.pyc").write_bytes(b"x")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    data, sha = codestore.pack_folder(folder)
    assert sha == hashlib.sha256(data).hexdigest()

    # Same content, other timestamps: same bytes.
    later = time.time() + 3600
    for p in folder.rglob("*"):
        os.utime(p, (later, later))
    assert codestore.pack_folder(folder) == (data, sha)

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["demo_mod", "demo_mod/__init__.py", "demo_mod/jobs.py", "manifest.json", "run.sh"]
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members.values()} == {(0, 0, 0, "")}
    assert members["run.sh"].mode == 0o755 and members["manifest.json"].mode == 0o644


def test_pack_folder_refuses_symlinks(make_folder, tmp_path):
    folder = make_folder()
    (folder / "link").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match="symbolic links"):
        codestore.pack_folder(folder)


# --- unpacking -----------------------------------------------------------------------------------


def test_safe_extract_accepts_tar_gz_and_zip_and_strips_one_top_folder(make_folder, tmp_path):
    files = module_files(make_folder())
    for i, data in enumerate(
        [
            tar_gz(files),
            tar_gz({f"./{k}": v for k, v in files.items()}),
            tar_gz({f"demo-mod/{k}": v for k, v in files.items()}),
            zip_bytes(files),
            zip_bytes({**{f"demo-mod/{k}": v for k, v in files.items()}, "__MACOSX/._x": b"junk"}),
        ]
    ):
        dest = tmp_path / f"out{i}"
        codestore.safe_extract(data, dest, **LIMITS)
        assert module_files(dest) == files, i


def test_safe_extract_keeps_a_lone_folder_without_manifest(tmp_path):
    codestore.safe_extract(tar_gz({"pkg/mod.py": b"x = 1\n"}), tmp_path / "out", **LIMITS)
    assert (tmp_path / "out" / "pkg" / "mod.py").is_file()


REFUSED = {
    "traversal": (tar_gz({"manifest.json": b"{}", "../evil.py": b"x"}), InvalidInput, "traversal"),
    "nested traversal": (tar_gz({"a/../../evil.py": b"x"}), InvalidInput, "traversal"),
    "absolute": (tar_gz({"/etc/cron.d/evil": b"x"}), InvalidInput, "absolute"),
    "windows absolute": (zip_bytes({"C:/evil.py": b"x"}), InvalidInput, "absolute"),
    "backslash": (zip_bytes({"..\\evil.py": b"x"}), InvalidInput, "backslash"),
    "zip traversal": (zip_bytes({"../evil.py": b"x"}), InvalidInput, "traversal"),
    "symlink": (
        tar_gz([("link", None, {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"})]),
        InvalidInput,
        "symbolic",
    ),
    "zip symlink": (zip_bytes({"a.py": b"x"}, symlinks={"link": "/etc/passwd"}), InvalidInput, "symbolic"),
    "hardlink": (
        tar_gz([("link", None, {"type": tarfile.LNKTYPE, "linkname": "manifest.json"})]),
        InvalidInput,
        "hard",
    ),
    "device": (tar_gz([("dev", None, {"type": tarfile.CHRTYPE})]), InvalidInput, "device"),
    "fifo": (tar_gz([("fifo", None, {"type": tarfile.FIFOTYPE})]), InvalidInput, "FIFO"),
    "not an archive": (b"#!/bin/sh\nrm -rf /\n", InvalidInput, "not a .zip or .tar.gz"),
    "plain tar": (b"\0" * 1024, InvalidInput, "not a .zip or .tar.gz"),
    "corrupt gzip": (b"\x1f\x8b\x08\x00" + b"garbage" * 10, InvalidInput, "not a valid tar.gz"),
    "corrupt zip": (b"PK\x03\x04" + b"garbage" * 10, InvalidInput, "not a valid zip"),
    "too many files": (tar_gz({f"f{i}.txt": b"" for i in range(codestore.MAX_FILES + 1)}), PayloadTooLarge, "entries"),
}


def _bomb() -> bytes:
    """101 MiB of zeros in one file: about 100 KiB compressed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = codestore.MAX_UNPACKED_BYTES + codestore.MiB
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return buffer.getvalue()


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_safe_extract_refuses(case, tmp_path):
    data, error, words = REFUSED[case]
    dest = tmp_path / "out"
    with pytest.raises(error, match=words):
        codestore.safe_extract(data, dest, **LIMITS)
    assert not dest.exists()


def test_safe_extract_refuses_duplicates_and_clashes(tmp_path):
    dup = tar_gz([("a.py", b"1", {}), ("a.py", b"2", {})])
    with pytest.raises(InvalidInput, match="duplicate"):
        codestore.safe_extract(dup, tmp_path / "x", **LIMITS)
    clash = tar_gz({"a": b"file", "a/b.py": b"x"})
    with pytest.raises(InvalidInput, match="share this name"):
        codestore.safe_extract(clash, tmp_path / "y", **LIMITS)


def test_safe_extract_refuses_a_bomb_without_unpacking_it(tmp_path):
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge, match="unpacks to more than 100.0 MiB"):
        codestore.safe_extract(_bomb(), tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - started < 10


def test_materialize_is_idempotent_and_checks_the_digest(make_folder, tmp_path):
    data, sha = codestore.pack_folder(make_folder())
    state = tmp_path / "state"
    first = codestore.materialize(state, "demo-mod", "1.0.0", sha, data)
    assert first == state / "code" / "demo-mod" / f"1.0.0-{sha[:12]}"
    assert codestore.materialize(state, "demo-mod", "1.0.0", sha) == first  # no data needed any more
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folder left
    with pytest.raises(InvalidInput, match="sha256"):
        codestore.materialize(state, "demo-mod", "2.0.0", sha, data + b"x")
    with pytest.raises(FileNotFoundError):
        codestore.materialize(state, "demo-mod", "3.0.0", sha)
    with pytest.raises(ValueError):
        codestore.code_folder(state, "../x", "1.0.0", sha)


# --- through the API -----------------------------------------------------------------------------


async def test_upload_tar_gz_keeps_the_bundle_and_its_sha256(api, db, settings):
    files = module_files(api.folder())
    data = tar_gz({f"demo-mod/{k}": v for k, v in files.items()})
    r = await api.upload(data, "demo-mod.tar.gz")
    assert r.status_code == 201, r.text
    module = r.json()
    assert r.headers["location"] == f"{MODULES}/demo-mod"
    assert module["bundle_sha256"] == hashlib.sha256(data).hexdigest()
    assert module["manifest"] == json.loads(files["manifest.json"])
    assert (await api.act("demo-mod", "install"))["status"] == "INSTALLED"

    r = await api.client.get(f"{MODULES}/demo-mod/versions", headers=api.headers)
    (version,) = r.json()["items"]
    assert version["source"] == "upload:demo-mod.tar.gz"
    assert version["bundle_size"] == len(data) and version["current"] is True
    stored = await db.scalar(select(ModuleVersion.bundle))
    assert stored == data


async def test_upload_zip_with_a_top_level_folder(api):
    files = module_files(api.folder())
    r = await api.upload(zip_bytes({f"demo-mod-main/{k}": v for k, v in files.items()}), "demo.zip")
    assert r.status_code == 201, r.text
    assert (await api.act("demo-mod", "install"))["status"] == "INSTALLED"


async def test_refused_uploads_store_nothing(api, db, settings):
    files = module_files(api.folder())
    good = {f"demo-mod/{k}": v for k, v in files.items()}
    cases = {
        "traversal": (tar_gz({**good, "../x": b"x"}), 422, "traversal"),
        "absolute": (tar_gz({**good, "/tmp/x": b"x"}), 422, "absolute"),
        "symlink": (
            tar_gz(
                [
                    *[(k, v, {}) for k, v in good.items()],
                    ("demo-mod/link", None, {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
                ]
            ),
            422,
            "symbolic",
        ),  # fmt: skip
        "zip symlink": (zip_bytes(good, symlinks={"demo-mod/link": "/etc"}), 422, "symbolic"),
        "not an archive": (b"hello world", 422, "not a .zip or .tar.gz"),
        "empty": (b"", 422, "not a .zip or .tar.gz"),
        "bomb": (_bomb(), 413, "unpacks to more than"),
        "oversize": (os.urandom(codestore.MAX_BUNDLE_BYTES + 1), 413, "exceeds 20 MiB"),
        "no manifest": (tar_gz({"demo_mod/jobs.py": b"x = 1"}), 422, "no manifest.json"),
        "bad manifest json": (tar_gz({"manifest.json": b"{nope"}), 422, "not valid JSON"),
        "invalid manifest": (tar_gz({"manifest.json": b'{"name": "x"}'}), 422, "manifest is invalid"),
    }
    for case, (data, status, words) in cases.items():
        r = await api.upload(data)
        assert r.status_code == status, (case, r.text)
        assert words in r.json()["error"]["message"], (case, r.text)
    r = await api.client.post(MODULES, files={"other": ("x", b"x")}, headers=api.headers)
    assert r.status_code == 422 and "bundle" in r.json()["error"]["message"]
    assert await db.counts() == (0, 0)
    code_dir = settings.state_dir / "code"
    assert not code_dir.exists() or list(code_dir.rglob("*")) == []


async def test_refused_server_paths_store_nothing(api, db, settings, tmp_path):
    folder = api.folder()
    linked = api.folder(name="linked-mod")
    (linked / "secrets").symlink_to("/etc")
    cases = {
        "relative": ({"path": "relative/folder"}, 422, "absolute"),
        "missing": ({"path": str(tmp_path / "nope")}, 422, "not an existing folder"),
        "a file": ({"path": str(folder / "manifest.json")}, 422, "not an existing folder"),
        "symlink inside": ({"path": str(linked)}, 422, "symbolic links"),
        "no path": ({"manifest": {}}, 422, "request validation failed"),
        "unknown field": ({"path": str(folder), "extra": 1}, 422, "request validation failed"),
    }
    for case, (body, status, words) in cases.items():
        r = await api.client.post(MODULES, json=body, headers=api.headers)
        assert r.status_code == status, (case, r.text)
        assert words in r.json()["error"]["message"], (case, r.text)
    r = await api.client.post(MODULES, content=b"path=/x", headers={**api.headers, "content-type": "text/plain"})
    assert r.status_code == 415
    assert await db.counts() == (0, 0)
    assert not (settings.state_dir / "code").exists()
