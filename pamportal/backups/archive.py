"""The backup archive format (``.pambak``), free of Django: streamed AES-256-GCM over a
tar stream, and the signed manifest's bytes.

Layout, all integers big-endian::

    MAGIC (8) | header length (u32) | header (canonical JSON) | SHA-256 of the header (32)
    then chunks, each: ciphertext length (u32) | AES-256-GCM(plaintext) with its 16-byte tag

The header says ``{"format", "version", "cluster_id", "created", "chunk_size",
"kdf": {"name", "salt"}, "nonce_prefix", "key_check"}``. The key is
``HKDF-SHA256(MEK, salt, info=KEY_INFO)`` with a random salt per archive; chunk ``i``'s
nonce is the archive's random 8-byte prefix and ``i`` (u32), and its associated data is
the header's SHA-256, ``i`` (u64) and a final flag (one byte). So a changed header, a
chunk moved, swapped, dropped or taken from another archive, or an archive cut after
any chunk but the final one, fails authentication, each at a named chunk. Every
plaintext chunk is ``chunk_size`` bytes except the final one (1 to ``chunk_size``
bytes, or none for an empty stream): memory stays flat whatever the size.

``key_check`` tells a wrong MEK from a changed file before anything is decrypted: an
HMAC under a key derived from the MEK (its own purpose) over a constant, as the joining
bundle does. The header's plain SHA-256 tells a damaged header from a wrong key (an
edited ``key_check`` reads as "tampered", not "wrong MEK"); it is not what protects
the contents: the tags are.

Each refusal is an ``ArchiveError`` with a stable ``code``: ``not_an_archive``,
``unsupported_version``, ``wrong_mek``, ``tampered``, ``truncated``,
``forged_signature``, ``bad_contents`` (and ``wrong_cluster``, raised by the restore).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pamportal.crypto import mek as mek_module

MAGIC = b"PAMBAK\r\n"
FORMAT = "pamportal-backup"
VERSION = 1
KDF_NAME = "HKDF-SHA256"
KEY_INFO = b"pamportal backup v1"
KEY_CHECK_PURPOSE = "backup-key-check"
KEY_CHECK_INPUT = b"pamportal backup key check v1"
CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MIN_CHUNK_SIZE = 16
MAX_HEADER_BYTES = 4096
SALT_BYTES = 32
NONCE_PREFIX_BYTES = 8
TAG_BYTES = 16
HEADER_FIELDS = ("format", "version", "cluster_id", "created", "chunk_size", "kdf", "nonce_prefix", "key_check")

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "pamportal-backup-manifest"
MANIFEST_MAX_BYTES = 1024 * 1024
_MANIFEST_DOMAIN = b"pamportal-backup-manifest-v1\n"

_U32 = struct.Struct(">I")


class ArchiveError(Exception):
    """A backup archive refused. ``code`` is stable, ``message`` is for the operator;
    ``chunk`` names the chunk at fault where there is one."""

    def __init__(self, code: str, message: str, *, chunk: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.chunk = chunk

    def __repr__(self) -> str:
        return f"ArchiveError({self.code!r}, {self.message!r})"


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: Any, size: int, field: str) -> bytes:
    if not isinstance(text, str):
        raise _bad_header(f'"{field}" is not text')
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, base64.binascii.Error):
        raise _bad_header(f'"{field}" is not base64url') from None
    if len(raw) != size or _b64(raw) != text:
        raise _bad_header(f'"{field}" is not {size} bytes of base64url')
    return raw


def _bad_header(detail: str) -> ArchiveError:
    return ArchiveError("tampered", f"The archive's header is not valid ({detail}): the file was changed (tampered).")


def _check_mek(mek: bytes) -> bytes:
    if not isinstance(mek, (bytes, bytearray)) or len(mek) != mek_module.MEK_BYTES:
        raise ValueError("a MEK is 32 bytes")
    return bytes(mek)


def key_check(mek: bytes) -> bytes:
    return hmac.new(mek_module.derive(_check_mek(mek), KEY_CHECK_PURPOSE), KEY_CHECK_INPUT, hashlib.sha256).digest()


def archive_key(mek: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=KEY_INFO).derive(_check_mek(mek))


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + _U32.pack(index)


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


@dataclass(frozen=True)
class Header:
    cluster_id: str
    created: str
    chunk_size: int
    salt: bytes
    nonce_prefix: bytes
    digest: bytes  # SHA-256 of the header bytes: in every chunk's associated data


# --- Writing -------------------------------------------------------------------------------


class ArchiveWriter:
    """A write-only stream (what ``tarfile.open(mode="w|")`` needs) that encrypts what
    it is given into ``out``, chunk by chunk. ``close()`` writes the final chunk; it
    does not close ``out``. ``sha256`` and ``size`` are those of the bytes written."""

    def __init__(self, out: BinaryIO, *, mek: bytes, cluster_id: str, created: str,
                 chunk_size: int = CHUNK_SIZE, salt: bytes | None = None, nonce_prefix: bytes | None = None):
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes")
        self._out = out
        self._chunk_size = chunk_size
        salt = os.urandom(SALT_BYTES) if salt is None else salt
        self._prefix = os.urandom(NONCE_PREFIX_BYTES) if nonce_prefix is None else nonce_prefix
        header = {
            "format": FORMAT, "version": VERSION, "cluster_id": cluster_id, "created": created,
            "chunk_size": chunk_size, "kdf": {"name": KDF_NAME, "salt": _b64(salt)},
            "nonce_prefix": _b64(self._prefix), "key_check": _b64(key_check(mek)),
        }
        header_bytes = canonical_json(header)
        self._digest = hashlib.sha256(header_bytes).digest()
        self._aead = AESGCM(archive_key(mek, salt))
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._emit(MAGIC + _U32.pack(len(header_bytes)) + header_bytes + self._digest)

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.sha256.update(data)
        self.size += len(data)

    def _chunk(self, plaintext: bytes, final: bool) -> None:
        if self._index >= 2**32:
            raise ValueError("too many chunks for one archive")
        ciphertext = self._aead.encrypt(_nonce(self._prefix, self._index), plaintext, _aad(self._digest, self._index, final))
        self._emit(_U32.pack(len(ciphertext)) + ciphertext)
        self._index += 1

    def write(self, data: bytes) -> int:
        if self._closed:
            raise ValueError("the archive is closed")
        self._buffer += data
        # Strictly more than a chunk: the final chunk is written by close() and is never empty
        # unless the whole stream is.
        while len(self._buffer) > self._chunk_size:
            self._chunk(bytes(self._buffer[: self._chunk_size]), final=False)
            del self._buffer[: self._chunk_size]
        return len(data)

    def close(self) -> None:
        if not self._closed:
            self._chunk(bytes(self._buffer), final=True)
            self._buffer = bytearray()
            self._closed = True

    @property
    def chunks(self) -> int:
        return self._index


# --- Reading -------------------------------------------------------------------------------


def _read_exactly(source: BinaryIO, size: int) -> bytes:
    parts, missing = [], size
    while missing:
        part = source.read(missing)
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def header_read(source: BinaryIO, *, mek: bytes) -> Header:
    """Read and check the header from ``source``; refuse a file that is not an archive,
    an unknown version, a changed header and a wrong MEK, before decrypting anything."""
    mek = _check_mek(mek)
    magic = _read_exactly(source, len(MAGIC))
    if magic != MAGIC:
        raise ArchiveError("not_an_archive", "This file is not a pamportal backup archive (.pambak).")
    raw_length = _read_exactly(source, 4)
    if len(raw_length) < 4:
        raise ArchiveError("truncated", "The archive ends inside its header (truncated).")
    (length,) = _U32.unpack(raw_length)
    if not 2 <= length <= MAX_HEADER_BYTES:
        raise _bad_header(f"its length is {length} bytes")
    header_bytes = _read_exactly(source, length)
    digest = _read_exactly(source, 32)
    if len(header_bytes) < length or len(digest) < 32:
        raise ArchiveError("truncated", "The archive ends inside its header (truncated).")
    if not hmac.compare_digest(hashlib.sha256(header_bytes).digest(), digest):
        raise ArchiveError("tampered", "The archive's header does not match its checksum: the file was changed "
                                       "(tampered) or damaged.")
    try:
        header = json.loads(header_bytes.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _bad_header("not JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArchiveError("not_an_archive", "This file is not a pamportal backup archive (.pambak).")
    version = header.get("version")
    if type(version) is not int or version != VERSION:
        shown = json.dumps(version)[:20]
        raise ArchiveError("unsupported_version",
                           f"This backup archive has format version {shown}; this console reads version {VERSION}.")
    if sorted(header) != sorted(HEADER_FIELDS):
        raise _bad_header("its fields are not those of a version 1 archive")
    chunk_size = header["chunk_size"]
    if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise _bad_header("its chunk size is out of range")
    if not isinstance(header["cluster_id"], str) or not isinstance(header["created"], str):
        raise _bad_header("cluster id and time must be text")
    kdf = header["kdf"]
    if not isinstance(kdf, dict) or sorted(kdf) != ["name", "salt"] or kdf["name"] != KDF_NAME:
        raise _bad_header(f"its key derivation is not {KDF_NAME}")
    salt = _unb64(kdf["salt"], SALT_BYTES, "kdf.salt")
    prefix = _unb64(header["nonce_prefix"], NONCE_PREFIX_BYTES, "nonce_prefix")
    check = _unb64(header["key_check"], 32, "key_check")
    if not hmac.compare_digest(check, key_check(mek)):
        raise ArchiveError(
            "wrong_mek",
            "The Master Encryption Key does not open this archive (wrong MEK). Use the MEK of the cluster "
            "that made the backup.",
        )
    return Header(cluster_id=header["cluster_id"], created=header["created"], chunk_size=chunk_size,
                  salt=salt, nonce_prefix=prefix, digest=digest)


class ArchiveReader:
    """A read-only stream (what ``tarfile.open(mode="r|")`` needs) of the decrypted
    plaintext. Every byte it returns comes from a chunk whose tag verified; the end
    of the stream is only reported after the final chunk, so a cut archive is refused
    (``finish()`` reads to that end and refuses anything after it)."""

    def __init__(self, source: BinaryIO, *, mek: bytes):
        self._source = source
        self.header = header_read(source, mek=mek)
        self._aead = AESGCM(archive_key(mek, self.header.salt))
        self._index = 0
        self._buffer = b""
        self._offset = 0
        self._done = False

    @property
    def chunks_read(self) -> int:
        return self._index

    def _next_chunk(self) -> None:
        index = self._index
        raw_length = _read_exactly(self._source, 4)
        if not raw_length:
            raise ArchiveError(
                "truncated",
                f"The archive ends after chunk {index - 1} without its final chunk: it was cut short (truncated).",
                chunk=index,
            )
        if len(raw_length) < 4:
            raise ArchiveError("truncated", f"The archive ends inside chunk {index} (truncated).", chunk=index)
        (length,) = _U32.unpack(raw_length)
        if not TAG_BYTES <= length <= self.header.chunk_size + TAG_BYTES:
            raise ArchiveError("tampered", f"Chunk {index} of the archive has an impossible length: the file was "
                                           "changed (tampered).", chunk=index)
        ciphertext = _read_exactly(self._source, length)
        if len(ciphertext) < length:
            raise ArchiveError("truncated", f"The archive ends inside chunk {index} (truncated).", chunk=index)
        nonce = _nonce(self.header.nonce_prefix, index)
        final = length < self.header.chunk_size + TAG_BYTES or not self._more()
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, _aad(self.header.digest, index, final))
        except InvalidTag:
            if final and length == self.header.chunk_size + TAG_BYTES:
                try:  # a whole chunk written as not the last one: the rest was cut off
                    self._aead.decrypt(nonce, ciphertext, _aad(self.header.digest, index, False))
                except InvalidTag:
                    pass
                else:
                    raise ArchiveError(
                        "truncated",
                        f"The archive ends after chunk {index} without its final chunk: it was cut short (truncated).",
                        chunk=index + 1,
                    ) from None
            raise ArchiveError(
                "tampered",
                f"Chunk {index} of the archive does not authenticate: the file was changed (tampered) or damaged.",
                chunk=index,
            ) from None
        self._index += 1
        self._buffer, self._offset = plaintext, 0
        if final:
            self._done = True
            if self._source.read(1):
                raise ArchiveError("tampered", f"The archive holds data after its final chunk ({index}): the file was "
                                               "changed (tampered).", chunk=index + 1)

    def _more(self) -> bool:
        """Whether anything follows the current position of the source (one byte peeked)."""
        peek = getattr(self._source, "peek", None)
        if peek is not None:
            return bool(peek(1))
        position = self._source.tell()
        more = bool(self._source.read(1))
        self._source.seek(position)
        return more

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if self._offset >= len(self._buffer):
                if self._done:
                    break
                self._next_chunk()
                continue
            want = len(self._buffer) - self._offset if size < 0 else min(size - len(out), len(self._buffer) - self._offset)
            out += self._buffer[self._offset : self._offset + want]
            self._offset += want
        return bytes(out)

    def finish(self) -> None:
        """Authenticate the rest, to the final chunk (a tar reader stops at its end
        marker and need not read the padding after it)."""
        while not self._done:
            self._next_chunk()
        self._buffer, self._offset = b"", 0


# --- The manifest's signature -------------------------------------------------------------


def manifest_message(manifest: dict) -> bytes:
    """The bytes the manifest signature covers: everything but the signature itself."""
    return _MANIFEST_DOMAIN + canonical_json({k: v for k, v in manifest.items() if k != "signature"})


def manifest_signature_check(manifest: dict) -> str:
    """Check the manifest's Ed25519 signature with the public key it names; return the
    key id. Whether that key is the audit key of the backed-up trail is checked against
    the database copy (``ArchiveError("forged_signature")`` either way)."""
    forged = ArchiveError("forged_signature",
                          "The archive's manifest signature does not verify: the manifest was forged or changed.")
    signature, public = manifest.get("signature"), manifest.get("public_key")
    if not isinstance(signature, dict) or not isinstance(public, dict):
        raise forged
    if signature.get("algorithm") != "Ed25519" or public.get("algorithm") != "Ed25519":
        raise forged
    try:
        public_raw = base64.b64decode(public.get("raw_base64", ""), validate=True)
        value = base64.b64decode(signature.get("value", ""), validate=True)
        key = Ed25519PublicKey.from_public_bytes(public_raw)
        key.verify(value, manifest_message(manifest))
    except (InvalidSignature, ValueError, TypeError):
        raise forged from None
    key_id = hashlib.sha256(public_raw).hexdigest()[:16]
    if signature.get("key_id") != key_id or public.get("key_id") != key_id:
        raise forged
    return key_id
