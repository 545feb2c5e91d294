"""Bundles that attack the API's memory or probe its filesystem: a tar metadata header declaring
1.1 GiB is refused from its header with little memory, manifests are capped at 256 KiB, and no
error message names a folder of the host."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from registry import codestore
from registry.errors import PayloadTooLarge
from tests.modules.test_modules_bundles import LIMITS, module_files, tar_gz

MODULES = "/api/v1/modules"
MiB = 1024 * 1024
GiB = 1024 * MiB


def _header(name: str, size: int, kind: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    # GNU format writes sizes of 8 GiB and more in base-256; 1.1 GiB fits the octal field.
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _gzip_stream(parts: list[bytes | tuple[int, int]]) -> bytes:
    """A gzip stream of ``parts``: bytes as they are, ``(n, byte)`` as n copies of that byte.

    Built from concatenated gzip members (a valid gzip file, read as one stream), so a gigabyte of
    zeros costs one compressed mebibyte repeated, not a gigabyte of compression.
    """
    out = []
    for part in parts:
        if isinstance(part, bytes):
            out.append(gzip.compress(part, mtime=0))
            continue
        n, byte = part
        whole, rest = divmod(n, MiB)
        out.append(gzip.compress(bytes([byte]) * MiB, compresslevel=9, mtime=0) * whole)
        if rest:
            out.append(gzip.compress(bytes([byte]) * rest, mtime=0))
    return b"".join(out)


@pytest.fixture(scope="module")
def long_name_bomb() -> bytes:
    """1.1 MB on the wire: a GNU long-name header declaring 1.1 GiB, followed by that many zeros."""
    size = int(1.1 * GiB)
    return _gzip_stream([_header("././@LongLink", size, tarfile.GNUTYPE_LONGNAME), (size, 0)])


async def test_a_long_name_header_of_a_gigabyte_is_refused_with_little_memory(api, db, long_name_bomb):
    assert len(long_name_bomb) < 2 * MiB
    tracemalloc.start()
    try:
        r = await api.upload(long_name_bomb, "bomb.tar.gz")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413, r.text
    assert r.json()["error"]["details"] == {"size": int(1.1 * GiB), "limit": codestore.MAX_TAR_META_BYTES}
    assert peak < 50 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert await db.counts() == (0, 0)


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE])
def test_every_kind_of_metadata_header_is_capped(kind, tmp_path):
    size = codestore.MAX_TAR_META_BYTES + 1
    data = _gzip_stream([_header("meta", size, kind), (size, ord("a")), (1024, 0)])
    with pytest.raises(PayloadTooLarge, match="metadata entry"):
        codestore.safe_extract(data, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists()


def test_declared_file_sizes_count_before_anything_is_read(tmp_path):
    data = _gzip_stream([_header("big.bin", 2 * GiB, tarfile.REGTYPE)])
    with pytest.raises(PayloadTooLarge, match="unpacks to more than"):
        codestore.safe_extract(data, tmp_path / "out", **LIMITS)


def test_real_long_names_and_pax_headers_still_unpack(tmp_path):
    name = "pkg/" + "n" * 150 + ".py"
    buffer = io.BytesIO()
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as tar:
            info = tarfile.TarInfo(name)
            info.size = 2
            info.pax_headers = {"comment": "é" * 100} if fmt == tarfile.PAX_FORMAT else {}
            tar.addfile(info, io.BytesIO(b"ok"))
        out = tmp_path / f"out-{fmt}"
        codestore.safe_extract(buffer.getvalue(), out, **LIMITS)
        assert (out / name).read_bytes() == b"ok"


async def test_the_manifest_is_capped_at_256_kib(api, db, make_folder):
    folder = make_folder()
    manifest = json.loads((folder / "manifest.json").read_text())
    # Whitespace is enough: the cap is on bytes, before parsing.
    (folder / "manifest.json").write_text(json.dumps(manifest) + " " * (256 * 1024))
    for r in (await api.upload(tar_gz(module_files(folder))), await _register_path(api, folder)):
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["errors"][0]["code"] == "manifest.too_large"
    padded = {**manifest, "x-pad": "x" * (256 * 1024)}
    r = await api.client.post(MODULES, json={"path": str(folder), "manifest": padded}, headers=api.headers)
    assert r.status_code == 422 and r.json()["error"]["details"]["errors"][0]["code"] == "manifest.too_large"
    assert await db.counts() == (0, 0)


async def _register_path(api, folder: Path):
    return await api.client.post(MODULES, json={"path": str(folder)}, headers=api.headers)


async def test_errors_never_name_the_hosts_folders(api, settings, tmp_path):
    # A file name too long for the filesystem fails while unpacking into the staging folder.
    r = await api.upload(tar_gz({"manifest.json": b"{}", "pkg/" + "n" * 300 + ".py": b"x"}))
    assert r.status_code == 422, r.text
    assert "/tmp" not in r.text and str(tmp_path) not in r.text and "autoplat-stage" not in r.text
    assert r.json()["error"]["message"] == "the bundle cannot be unpacked: File name too long"

    # Import errors quote file paths (ImportError, __file__): they read relative to the bundle.
    code = api.HANDLERS + "\nraise RuntimeError('loaded from ' + __file__)\n"
    module = await api.register(api.folder(code=code))
    r = await api.client.post(f"{MODULES}/{module['name']}/install", headers=api.headers)
    assert r.status_code == 422, r.text
    text = r.text + json.dumps((await api.get(module["name"]))["status_reason"])
    assert str(settings.state_dir) not in text and str(settings.state_dir.resolve()) not in text
    assert "loaded from demo_mod/jobs.py" in r.json()["error"]["message"]
