"""Making damaged and forged archives from a real one, for the refusal tests."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

from pamportal.backups.archive import manifest_message
from pamportal.backups.contents import archive_extract, archive_write
from pamportal.crypto import ed25519


def layout(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(end of the header, [(offset, length) of each chunk's ciphertext])."""
    (length,) = struct.unpack(">I", data[8:12])
    position = 12 + length + 32
    header_end, chunks = position, []
    while position < len(data):
        (size,) = struct.unpack(">I", data[position : position + 4])
        chunks.append((position + 4, size))
        position += 4 + size
    return header_end, chunks


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def extract(archive: Path, mek: bytes, dest: Path):
    dest.mkdir(parents=True)
    with open(archive, "rb") as handle:
        return archive_extract(handle, mek=mek, dest=dest)


def repack(archive: Path, mek: bytes, work: Path, edit, *, resign_with=None) -> Path:
    """``archive`` opened, its manifest changed by ``edit`` and written again under the
    same MEK: with the original signature kept, or signed anew with ``resign_with``
    (a key that is not the trail's)."""
    extracted = extract(archive, mek, work / "unpacked")
    manifest = json.loads(json.dumps(extracted.manifest))
    edit(manifest)
    if resign_with is not None:
        raw = ed25519.public_raw(resign_with)
        key_id = ed25519.key_id_of(raw)
        manifest["public_key"] = {"algorithm": "Ed25519", "key_id": key_id, "raw_base64": base64.b64encode(raw).decode()}
        manifest.pop("signature", None)
        manifest["signature"] = {"algorithm": "Ed25519", "key_id": key_id,
                                 "value": ed25519.sign_b64(resign_with, manifest_message(manifest))}
    out = work / f"forged-{archive.name}"
    with open(out, "wb") as handle:
        archive_write(handle, mek=mek, cluster_id=extracted.header.cluster_id, created=extracted.header.created,
                      manifest=manifest, files=[(f["name"], extracted.files[f["name"]]) for f in manifest["files"]],
                      mtime=0, chunk_size=extracted.header.chunk_size)
    return out
