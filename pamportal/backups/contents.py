"""What is inside a backup archive: a tar stream whose first member is the signed
manifest and whose other members are exactly the files the manifest lists, each with
its size and SHA-256. Written and read as streams (no Django here); reading extracts
into a scratch directory and trusts nothing until every chunk, the manifest signature
and every file's hash have been checked."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable

from .archive import (
    CHUNK_SIZE,
    MANIFEST_MAX_BYTES,
    MANIFEST_NAME,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    Header,
    manifest_signature_check,
)

COPY_BLOCK = 256 * 1024


def file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(COPY_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@dataclass(frozen=True)
class Written:
    sha256: str
    size: int
    chunks: int


def archive_write(out: BinaryIO, *, mek: bytes, cluster_id: str, created: str, manifest: dict,
                  files: Iterable[tuple[str, Path]], mtime: int, chunk_size: int = CHUNK_SIZE) -> Written:
    """Write the archive to ``out``: the manifest (already signed) and then ``files``
    (archive name, path on disk), streamed."""
    writer = ArchiveWriter(out, mek=mek, cluster_id=cluster_id, created=created, chunk_size=chunk_size)
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest_bytes), mtime), io.BytesIO(manifest_bytes))
        for name, path in files:
            with open(path, "rb") as handle:
                tar.addfile(_tarinfo(name, os.fstat(handle.fileno()).st_size, mtime), handle)
    writer.close()
    return Written(sha256=writer.sha256.hexdigest(), size=writer.size, chunks=writer.chunks)


@dataclass(frozen=True)
class Extracted:
    header: Header
    manifest: dict
    key_id: str  # of the key that signed the manifest (checked against the database copy later)
    files: dict[str, Path]  # archive name -> extracted path
    chunks: int


def _bad(message: str) -> ArchiveError:
    return ArchiveError("bad_contents", f"The archive opened with this MEK, but {message}.")


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise _bad(f"it holds a member with an unsafe name ({name[:80]!r})")
    return path


def _listed_files(manifest: dict) -> dict[str, dict]:
    files = manifest.get("files")
    if not isinstance(files, list):
        raise _bad("its manifest lists no files")
    listed: dict[str, dict] = {}
    for entry in files:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("sha256"), str)
                and type(entry.get("size")) is int):
            raise _bad("its manifest lists a file without name, size and SHA-256")
        _safe_name(entry["name"])
        if entry["name"] in listed or entry["name"] == MANIFEST_NAME:
            raise _bad(f"its manifest lists {entry['name'][:80]!r} twice")
        listed[entry["name"]] = entry
    return listed


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, limit: int) -> tuple[str, int]:
    source = tar.extractfile(member)
    if source is None:
        raise _bad(f"{member.name[:80]!r} is not a regular file")
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        while block := source.read(COPY_BLOCK):
            size += len(block)
            if size > limit:
                raise _bad(f"{member.name[:80]!r} is larger than its manifest says")
            digest.update(block)
            handle.write(block)
    return digest.hexdigest(), size


def archive_extract(source: BinaryIO, *, mek: bytes, dest: Path) -> Extracted:
    """Decrypt and unpack the archive read from ``source`` into ``dest`` (a new, empty
    directory). Raises ``ArchiveError``; on return every chunk authenticated, the
    manifest's signature verified with the key it names, and every listed file is
    there with its size and SHA-256."""
    reader = ArchiveReader(source, mek=mek)
    manifest: dict | None = None
    key_id = ""
    listed: dict[str, dict] = {}
    extracted: dict[str, Path] = {}
    try:
        tar = tarfile.open(fileobj=reader, mode="r|")
    except tarfile.TarError:
        raise _bad("what it holds is not a tar stream") from None
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError:
                raise _bad("what it holds is not a well-formed tar stream") from None
            if member is None:
                break
            if not member.isfile():
                raise _bad(f"it holds {member.name[:80]!r}, which is not a regular file")
            if manifest is None:
                if member.name != MANIFEST_NAME:
                    raise _bad("its first member is not the manifest")
                if member.size > MANIFEST_MAX_BYTES:
                    raise _bad("its manifest is too large")
                handle = tar.extractfile(member)
                try:
                    manifest = json.loads(handle.read().decode("utf-8")) if handle else None
                except (UnicodeDecodeError, ValueError):
                    manifest = None
                if not isinstance(manifest, dict):
                    raise _bad("its manifest is not a JSON object")
                key_id = manifest_signature_check(manifest)
                listed = _listed_files(manifest)
                continue
            entry = listed.get(member.name)
            if entry is None or member.name in extracted:
                raise _bad(f"it holds {member.name[:80]!r}, which its manifest does not list")
            target = dest.joinpath(*_safe_name(member.name).parts)
            sha256, size = _copy_member(tar, member, target, entry["size"])
            if size != entry["size"] or sha256 != entry["sha256"]:
                raise _bad(f"{member.name[:80]!r} does not match the size and SHA-256 in its manifest")
            extracted[member.name] = target
    reader.finish()
    if manifest is None:
        raise _bad("it holds no manifest")
    missing = sorted(set(listed) - set(extracted))
    if missing:
        raise _bad(f"{missing[0][:80]!r}, listed in its manifest, is missing")
    return Extracted(header=reader.header, manifest=manifest, key_id=key_id, files=extracted,
                     chunks=reader.chunks_read)
