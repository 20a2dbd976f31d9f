"""The archive format on its own (no database): round trips, and every kind of damage
refused with its own code, naming the chunk where there is one."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import tracemalloc

import pytest

from pamportal.backups import archive
from pamportal.backups.archive import MAGIC, TAG_BYTES, ArchiveError, ArchiveReader, ArchiveWriter, manifest_message
from pamportal.backups.contents import archive_extract, archive_write
from pamportal.crypto import ed25519
from tests.backups.helpers import flip as _flip
from tests.backups.helpers import layout as _layout

MEK = bytes(range(32))
OTHER_MEK = bytes(range(1, 33))
CHUNK = 4096


def _encrypt(plaintext: bytes, *, chunk_size: int = CHUNK, mek: bytes = MEK) -> bytes:
    out = io.BytesIO()
    writer = ArchiveWriter(out, mek=mek, cluster_id="c-1", created="2026-12-07T10:00:00Z", chunk_size=chunk_size)
    for start in range(0, len(plaintext), 1000):
        writer.write(plaintext[start : start + 1000])
    writer.close()
    return out.getvalue()


def _decrypt(data: bytes, *, mek: bytes = MEK) -> bytes:
    reader = ArchiveReader(io.BufferedReader(io.BytesIO(data)), mek=mek)
    plaintext = reader.read()
    reader.finish()
    return plaintext


def _refused(data: bytes, code: str, *, mek: bytes = MEK) -> ArchiveError:
    with pytest.raises(ArchiveError) as caught:
        _decrypt(data, mek=mek)
    assert caught.value.code == code, caught.value.message
    return caught.value


PLAINTEXT = os.urandom(CHUNK * 5 + 123)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK * 3, CHUNK * 5 + 123])
def test_round_trip_at_every_boundary(size):
    plaintext = PLAINTEXT[:size]
    data = _encrypt(plaintext)
    assert data.startswith(MAGIC)
    assert _decrypt(data) == plaintext
    _, chunks = _layout(data)
    # Whole chunks and one final chunk, never an empty one after a whole chunk.
    assert len(chunks) == max(1, -(-size // CHUNK))
    assert all(length == CHUNK + TAG_BYTES for _, length in chunks[:-1])


def test_the_header_carries_no_secret_and_a_fresh_salt_and_nonce_prefix_each_time():
    one, two = _encrypt(b"same"), _encrypt(b"same")
    header_one = json.loads(one[12 : 12 + struct.unpack(">I", one[8:12])[0]])
    header_two = json.loads(two[12 : 12 + struct.unpack(">I", two[8:12])[0]])
    assert header_one["kdf"]["salt"] != header_two["kdf"]["salt"]
    assert header_one["nonce_prefix"] != header_two["nonce_prefix"]
    assert header_one["key_check"] == header_two["key_check"]  # the same MEK
    assert MEK not in one and base64.b64encode(MEK) not in one


def test_not_an_archive():
    assert _refused(b"PK\x03\x04 a zip file", "not_an_archive").message.startswith("This file is not a pamportal backup")
    assert _refused(b"", "not_an_archive")
    assert _refused(_flip(_encrypt(b"x"), 0), "not_an_archive")


def test_a_newer_format_version_is_named():
    data = _encrypt(b"x")
    length = struct.unpack(">I", data[8:12])[0]
    header = json.loads(data[12 : 12 + length])
    header["version"] = 2
    raw = archive.canonical_json(header)
    forged = MAGIC + struct.pack(">I", len(raw)) + raw + hashlib.sha256(raw).digest() + data[12 + length + 32 :]
    error = _refused(forged, "unsupported_version")
    assert "format version 2" in error.message and "reads version 1" in error.message


def test_wrong_mek_is_told_before_anything_is_decrypted():
    error = _refused(_encrypt(PLAINTEXT), "wrong_mek", mek=OTHER_MEK)
    assert "wrong MEK" in error.message


@pytest.mark.parametrize("where", ["length", "format", "salt", "nonce_prefix", "key_check", "digest"])
def test_a_flipped_byte_in_the_header_is_tampering_not_a_wrong_key(where):
    data = _encrypt(PLAINTEXT)
    header_end, _ = _layout(data)
    text = data[12 : header_end - 32]
    offsets = {
        "length": 10,
        "format": 12 + text.index(b"pamportal-backup") + 3,
        "salt": 12 + text.index(b'"salt":"') + 10,
        "nonce_prefix": 12 + text.index(b'"nonce_prefix":"') + 18,
        "key_check": 12 + text.index(b'"key_check":"') + 15,
        "digest": header_end - 5,
    }
    _refused(_flip(data, offsets[where]), "tampered")


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_flipped_byte_in_a_chunk_names_the_chunk(which):
    data = _encrypt(PLAINTEXT)
    _, chunks = _layout(data)
    index = {"first": 0, "middle": len(chunks) // 2, "last": len(chunks) - 1}[which]
    offset, length = chunks[index]
    error = _refused(_flip(data, offset + length // 2), "tampered")
    assert error.chunk == index and f"Chunk {index} " in error.message


def test_a_flipped_tag_byte_and_a_changed_chunk_length_are_tampering():
    data = _encrypt(PLAINTEXT)
    _, chunks = _layout(data)
    offset, length = chunks[1]
    _refused(_flip(data, offset + length - 1), "tampered")
    _refused(_flip(data, offset - 2), "tampered")  # the length prefix: an impossible length


@pytest.mark.parametrize("cut", ["after_a_whole_chunk", "inside_a_chunk", "inside_the_last_chunk", "inside_a_length",
                                 "inside_the_header"])
def test_a_truncated_archive_is_named_as_truncated(cut):
    data = _encrypt(PLAINTEXT)
    header_end, chunks = _layout(data)
    offset, length = chunks[2]
    last_offset, last_length = chunks[-1]
    end = {
        "after_a_whole_chunk": offset + length,
        "inside_a_chunk": offset + length // 2,
        "inside_the_last_chunk": last_offset + last_length - 1,
        "inside_a_length": offset + length + 2,
        "inside_the_header": header_end - 10,
    }[cut]
    error = _refused(data[:end], "truncated")
    assert "truncated" in error.message


def test_swapped_or_dropped_or_foreign_chunks_are_refused():
    data = _encrypt(PLAINTEXT)
    header_end, chunks = _layout(data)
    pieces = [data[offset - 4 : offset + length] for offset, length in chunks]
    swapped = data[:header_end] + b"".join([pieces[1], pieces[0], *pieces[2:]])
    assert _refused(swapped, "tampered").chunk == 0
    dropped = data[:header_end] + b"".join([pieces[0], *pieces[2:]])
    assert _refused(dropped, "tampered").chunk == 1
    # A chunk of another archive under the same MEK (another salt, key and nonces).
    other = _encrypt(PLAINTEXT)
    other_header_end, other_chunks = _layout(other)
    offset, length = other_chunks[1]
    foreign = data[:header_end] + pieces[0] + other[offset - 4 : offset + length] + b"".join(pieces[2:])
    assert _refused(foreign, "tampered").chunk == 1
    # Anything after the final chunk.
    assert _refused(data + b"\0", "tampered")


def test_memory_stays_flat_whatever_the_size():
    """8 MiB through the writer and the reader with 64 KiB chunks: neither ever holds
    much more than a chunk (the stream is never gathered)."""
    chunk = 64 * 1024
    block = os.urandom(256 * 1024)
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, mek=MEK, cluster_id="c", created="t", chunk_size=chunk)
    for _ in range(32):
        writer.write(block)
        assert len(writer._buffer) <= chunk
    writer.close()
    reader = ArchiveReader(io.BufferedReader(io.BytesIO(sink.getvalue())), mek=MEK)
    total = 0
    while part := reader.read(100_000):
        total += len(part)
        assert len(reader._buffer) <= chunk
    reader.finish()
    assert total == 32 * len(block)


def test_archive_write_of_a_large_file_allocates_about_a_chunk(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        for _ in range(24):
            handle.write(os.urandom(1024 * 1024))
    manifest = {"files": [{"name": "big.bin", "sha256": "0" * 64, "size": 0}]}
    tracemalloc.start()
    try:
        with open(tmp_path / "out.pambak", "wb") as out:
            archive_write(out, mek=MEK, cluster_id="c", created="t", manifest=manifest, files=[("big.bin", big)],
                          mtime=0, chunk_size=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes for a 24 MiB file"


# --- contents: the manifest and the files ------------------------------------------------


def _signed(manifest: dict, key=None) -> dict:
    key = key or ed25519.generate()
    public = base64.b64encode(ed25519.public_raw(key)).decode()
    key_id = ed25519.key_id_of(ed25519.public_raw(key))
    manifest = {**manifest, "public_key": {"algorithm": "Ed25519", "key_id": key_id, "raw_base64": public}}
    manifest["signature"] = {"algorithm": "Ed25519", "key_id": key_id,
                             "value": ed25519.sign_b64(key, manifest_message(manifest))}
    return manifest


def _archive(tmp_path, manifest_edit=None, files=None):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(10_000))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    manifest = _signed({"format": "pamportal-backup-manifest", "files": [
        {"name": "database/x.bin", "sha256": digest, "size": 10_000}]})
    if manifest_edit:
        manifest_edit(manifest)
    out = io.BytesIO()
    archive_write(out, mek=MEK, cluster_id="c", created="t", manifest=manifest,
                  files=files if files is not None else [("database/x.bin", payload)], mtime=0, chunk_size=CHUNK)
    return out.getvalue()


def _extract(data, tmp_path):
    dest = tmp_path / f"out-{os.urandom(4).hex()}"
    dest.mkdir()
    return archive_extract(io.BufferedReader(io.BytesIO(data)), mek=MEK, dest=dest)


def test_extract_checks_the_manifest_signature_and_every_file(tmp_path):
    extracted = _extract(_archive(tmp_path), tmp_path)
    assert extracted.files["database/x.bin"].read_bytes() == (tmp_path / "payload.bin").read_bytes()
    assert extracted.key_id == extracted.manifest["public_key"]["key_id"]


def test_a_manifest_changed_after_signing_is_forged(tmp_path):
    def edit(manifest):
        manifest["cluster_id"] = "someone-else"

    with pytest.raises(ArchiveError) as caught:
        _extract(_archive(tmp_path, edit), tmp_path)
    assert caught.value.code == "forged_signature"


def test_a_signature_of_another_key_than_the_one_named_is_forged(tmp_path):
    def edit(manifest):
        manifest["signature"]["value"] = _signed({"x": 1})["signature"]["value"]

    with pytest.raises(ArchiveError) as caught:
        _extract(_archive(tmp_path, edit), tmp_path)
    assert caught.value.code == "forged_signature"


def test_a_file_that_does_not_match_its_manifest_or_is_not_listed_is_refused(tmp_path):
    def wrong_hash(manifest):
        manifest["files"][0]["sha256"] = "0" * 64
        manifest.update(_signed({k: v for k, v in manifest.items() if k not in ("signature", "public_key")}))

    with pytest.raises(ArchiveError) as caught:
        _extract(_archive(tmp_path, wrong_hash), tmp_path)
    assert caught.value.code == "bad_contents" and "SHA-256" in caught.value.message
    extra = tmp_path / "extra"
    extra.write_bytes(b"x")
    with pytest.raises(ArchiveError) as caught:
        _extract(_archive(tmp_path, files=[("database/x.bin", tmp_path / "payload.bin"), ("../etc/passwd", extra)]),
                 tmp_path)
    assert caught.value.code == "bad_contents"
    with pytest.raises(ArchiveError) as caught:
        _extract(_archive(tmp_path, files=[]), tmp_path)
    assert caught.value.code == "bad_contents" and "missing" in caught.value.message
