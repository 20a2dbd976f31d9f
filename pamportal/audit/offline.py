#!/usr/bin/env python3
"""Verify a pamportal audit export offline: needs only Python 3.9+ and ``cryptography``.

    python3 verify_audit_export.py EXPORT MANIFEST [--public-key KEY]

This one file is both ``pamportal/audit/offline.py`` (what the portal uses to write
and check exports) and ``tools/verify_audit_export.py`` (the copy handed to anyone who
must check an export without trusting the portal); the suite keeps them identical.

What each check proves
----------------------
* **Manifest signature** (Ed25519 over the canonical manifest): the manifest was
  made by the holder of the key ``key_id``. Pin the key with ``--public-key`` (the key
  id, base64 or PEM shown on the portal's audit page): without it the check only shows
  that the manifest is consistent with the key it carries itself.
* **Checkpoint signature**: the chain head the node signed (position, hash, time) is
  genuine; when the checkpoint's position is in the file, that row must carry the
  checkpointed hash, which ties the file to the node's signed history.
* **File digest and size** (SHA-256 in the signed manifest): not one byte of the file
  changed since it was written. Holds for every format, the PDF included.
* **Rows** (CSV and JSON Lines): every row's hash is recomputed from its fields, so an
  edited row is named at its line; positions must increase, so re-ordered rows are
  named; where two rows are neighbours in the chain (position n and n+1), the second
  must record the first's hash. For an export of the whole trail (``contiguous``) there
  must be no gap, it must start at position 1 from the genesis hash and end at the
  manifest's last position, so a removed or inserted row is named too. An export of a
  filtered subset is not a contiguous chain: each row is still proven to be an event
  as the chain wrote it, and the signed digest, count, first/last hash and the digest
  of all row hashes prove that no row was added, removed or replaced.

CSV cells that began with ``=``, ``+``, ``-``, ``@``, ``'`` or a control character were
written with one ``'`` in front (so a spreadsheet never runs them); a cell beginning
with ``'`` is read back without it. The same holds for every line inside a cell: after
a line break (CR, LF, CRLF, NEL, U+2028...) such a character gets one ``'`` in front, read
back without it (manifests with ``"csv_escape": "line-starts"``). A cell holding a line
break, a comma or a quote is quoted. The file may begin with a UTF-8 BOM, which
spreadsheets need to read it as UTF-8; it is not part of the header.
Exit status: 0 verified, 1 refused, 2 unusable input.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

MANIFEST_FORMAT = "pamportal-audit-export-manifest/1"
GENESIS_HASH = "0" * 64
COLUMNS = (
    "position", "time", "actor_id", "actor_name", "source_ip", "request_id",
    "action", "target", "outcome", "details", "prev_hash", "hash",
)
_EVENT_DOMAIN = b"pamportal-audit-v1\n"
_MANIFEST_DOMAIN = b"pamportal-audit-manifest-v1\n"
_CHECKPOINT_DOMAIN = b"pamportal-audit-checkpoint-v1\n"
# First characters a spreadsheet would treat as a formula or a control: escaped with '.
ESCAPE_FIRST = frozenset("=+-@'") | frozenset(chr(c) for c in range(32)) | {"\x7f"}
# Line breaks (those ``str.splitlines`` knows); CRLF is one. A line inside a cell that
# begins with a character of ESCAPE_FIRST (other than a break) gets a ' as well.
LINE_BREAKS = "\n\x0b\x0c\r\x1c\x1d\x1e\x85\u2028\u2029"
_BREAK = "(\r\n|[" + LINE_BREAKS + "])"
_ESCAPE_AFTER_BREAK = re.compile(_BREAK + "(?=[" + re.escape("".join(sorted(ESCAPE_FIRST - set(LINE_BREAKS)))) + "])")
_ESCAPED_AFTER_BREAK = re.compile(_BREAK + "'")
_QUOTE_IF = re.compile('[,"' + LINE_BREAKS + "]")
CSV_ESCAPE = "line-starts"
BOM = "\ufeff"
MAX_MANIFEST_BYTES = 1 << 20


# --- formats, shared with the portal ------------------------------------------------
def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_message(manifest: dict) -> bytes:
    """The bytes the manifest signature covers: everything but the signature itself."""
    return _MANIFEST_DOMAIN + canonical_json({k: v for k, v in manifest.items() if k != "signature"})


def checkpoint_message(*, position: int, hash: str, time: str, key_id: str) -> bytes:
    return _CHECKPOINT_DOMAIN + canonical_json({"position": position, "hash": hash, "time": time, "key_id": key_id})


def csv_escape(value: str) -> str:
    escaped = _ESCAPE_AFTER_BREAK.sub("\\1'", value)
    return "'" + escaped if value and value[0] in ESCAPE_FIRST else escaped


def csv_unescape(value: str, *, line_starts: bool = True) -> str:
    value = value[1:] if value[:1] == "'" else value
    return _ESCAPED_AFTER_BREAK.sub("\\1", value) if line_starts else value


def csv_line(cells: Iterable[str]) -> str:
    """One CSV row (LF-terminated) of escaped cells; a cell holding a comma, a quote or
    any line break is quoted (``csv.writer`` with ``lineterminator="\\n"`` leaves a CR bare)."""
    out = []
    for cell in cells:
        cell = csv_escape(cell)
        out.append('"' + cell.replace('"', '""') + '"' if _QUOTE_IF.search(cell) else cell)
    return ",".join(out) + "\n"


def event_hash(parts: Iterable[str]) -> str:
    """SHA-256 over the length-prefixed fields: position, time, actor id, actor name,
    source IP, request id, action, target, outcome, details, previous hash."""
    buffer = [_EVENT_DOMAIN]
    for part in parts:
        data = part.encode("utf-8")
        buffer.append(b"%d:%b\n" % (len(data), data))
    return hashlib.sha256(b"".join(buffer)).hexdigest()


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


# --- verification -------------------------------------------------------------------
class Refused(Exception):
    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class Unusable(Exception):
    """The input cannot be checked at all (missing file, not a manifest...)."""


@dataclass
class Report:
    ok: bool = False
    checks: list[str] = field(default_factory=list)
    problem: str = ""
    first_bad_line: int | None = None
    rows: int = 0
    key_id: str = ""
    key_pinned: bool = False


def _load_public_key(text: str):
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = load_pem_public_key(text.encode("ascii"))
        if not isinstance(key, Ed25519PublicKey):
            raise Unusable("the pinned public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise Unusable("the pinned public key is neither a PEM nor base64 Ed25519 key") from None
    if len(raw) != 32:
        raise Unusable("the pinned public key is not 32 bytes of Ed25519")
    return Ed25519PublicKey.from_public_bytes(raw)


def _raw(public_key) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _check_signature(public_key, signature_b64: str, message: bytes) -> bool:
    try:
        public_key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def load_manifest(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise Unusable(f"cannot read the manifest: {exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise Unusable("the manifest is too large to be one")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unusable(f"the manifest is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise Unusable(f"not a pamportal audit export manifest (format {MANIFEST_FORMAT!r} expected)")
    for name in ("export", "count", "public_key", "signature", "contiguous", "upto_position"):
        if name not in manifest:
            raise Unusable(f"the manifest has no {name!r}")
    return manifest


def _file_digest(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                return digest.hexdigest(), size
            digest.update(chunk)
            size += len(chunk)


def _text_lines(path: str) -> Iterator[str]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused("it is not UTF-8 text (a byte was changed)", number) from None


def _csv_rows(path: str, *, line_starts: bool = True) -> Iterator[tuple[int, list]]:
    lines = _text_lines(path)
    first = next(lines, "")
    lines = itertools.chain([first[len(BOM):] if first.startswith(BOM) else first], lines)
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise Refused(f"it is not CSV: {exc}", reader.line_num) from None
    if header != list(COLUMNS):
        raise Refused("the header is not the audit export's columns", 1)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise Refused(f"it is not CSV: {exc}", reader.line_num) from None
        line = reader.line_num
        if len(cells) != len(COLUMNS):
            raise Refused(f"it has {len(cells)} cells instead of {len(COLUMNS)}", line)
        cells = [csv_unescape(cell, line_starts=line_starts) for cell in cells]
        try:
            position = int(cells[0])
            actor_id = None if cells[2] == "" else int(cells[2])
        except ValueError:
            raise Refused("its position or actor id is not a number", line) from None
        yield line, [position, cells[1], actor_id, *cells[3:]]


def _jsonl_rows(path: str) -> Iterator[tuple[int, list]]:
    for line, text in enumerate(_text_lines(path), 1):
        try:
            item = json.loads(text)
        except ValueError as exc:
            raise Refused(f"it is not JSON: {exc}", line) from None
        if not isinstance(item, dict) or list(item) != list(COLUMNS):
            raise Refused("it does not hold the audit export's fields in order", line)
        values = [item[name] for name in COLUMNS]
        if not isinstance(values[0], int) or not (values[2] is None or isinstance(values[2], int)):
            raise Refused("its position or actor id is not a number", line)
        if not all(isinstance(v, str) for i, v in enumerate(values) if i not in (0, 2)):
            raise Refused("a field that should be text is not", line)
        yield line, values


def _check_rows(rows: Iterator[tuple[int, list]], manifest: dict, report: Report) -> None:
    contiguous = bool(manifest["contiguous"])
    upto = int(manifest["upto_position"])
    checkpoint = manifest.get("checkpoint") or {}
    checkpoint_position = checkpoint.get("position")
    hashes = hashlib.sha256()
    count = 0
    prev_position, prev_hash, prev_line = 0, GENESIS_HASH, None
    first = last = None
    for line, values in rows:
        position, time, actor_id = values[0], values[1], values[2]
        parts = [str(position), time, "" if actor_id is None else str(actor_id), *values[3:11]]
        stored = values[11]
        if event_hash(parts) != stored:
            raise Refused(f"event {position} does not match its hash (the row was changed)", line)
        if position <= prev_position:
            raise Refused(
                f"event {position} comes after event {prev_position} (line {prev_line}): rows are out of order", line
            )
        if position > upto:
            raise Refused(f"event {position} is beyond the export's last position {upto}: added", line)
        if contiguous and position != prev_position + 1:
            raise Refused(
                f"event {position} follows event {prev_position}: event {prev_position + 1} is missing "
                f"(a row was removed or moved)", line,
            )
        if position == prev_position + 1 and values[10] != prev_hash:
            where = f"line {prev_line}" if prev_line else "the start of the chain"
            raise Refused(f"event {position} does not follow the event at {where} (its predecessor was changed or replaced)", line)
        if checkpoint_position == position and checkpoint.get("hash") != stored:
            raise Refused(f"event {position} is not the event the signed checkpoint pinned", line)
        if first is None:
            first = {"position": position, "hash": stored}
        hashes.update(stored.encode("ascii") + b"\n")
        prev_position, prev_hash, prev_line = position, stored, line
        count += 1
    last = {"position": prev_position, "hash": prev_hash} if count else None
    report.rows = count
    end = "the end of the file"
    if count != manifest["count"]:
        raise Refused(f"the file holds {count} events, the manifest says {manifest['count']}: rows were removed or added "
                      f"(checked up to {end})")
    if contiguous and count and prev_position != upto:
        raise Refused(f"the export ends at event {prev_position}, the manifest says {upto}: rows were removed at the end")
    if first != manifest.get("first") or last != manifest.get("last"):
        raise Refused("the first or last event differs from the manifest")
    if manifest.get("events_sha256") and hashes.hexdigest() != manifest["events_sha256"]:
        raise Refused("the digest of the events' hashes differs from the manifest")
    report.checks.append(
        f"rows: {count} events, each matches its hash, in order"
        + (", an unbroken chain from the genesis" if contiguous else ", chained wherever neighbours")
    )


def verify(export_path: str, manifest_path: str, *, public_key: str | None = None) -> Report:
    """Check an export against its manifest; ``Report.problem``/``first_bad_line`` say
    what is wrong. Raises ``Unusable`` when there is nothing that can be checked."""
    report = Report()
    manifest = load_manifest(manifest_path)
    carried = manifest.get("public_key") or {}
    try:
        carried_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(carried.get("raw_base64", ""), validate=True))
    except (ValueError, TypeError):
        raise Unusable("the manifest's public key is not an Ed25519 key") from None
    report.key_id = key_id_of(_raw(carried_key))
    try:
        if public_key:
            pinned_text = public_key.strip()
            if len(pinned_text) == 16 and all(c in "0123456789abcdef" for c in pinned_text):
                if pinned_text != report.key_id:
                    raise Refused(f"the manifest is signed with key {report.key_id}, not the expected key {pinned_text}")
            else:
                pinned = _load_public_key(pinned_text)
                if _raw(pinned) != _raw(carried_key):
                    raise Refused(
                        f"the manifest is signed with key {report.key_id}, not the expected key {key_id_of(_raw(pinned))}"
                    )
            report.key_pinned = True
        signature = manifest.get("signature") or {}
        if signature.get("key_id") != report.key_id or not _check_signature(
            carried_key, signature.get("value", ""), manifest_message(manifest)
        ):
            raise Refused("bad signature: the manifest does not verify with its key (it was changed or forged)")
        report.checks.append(
            f"manifest signature: good, key {report.key_id}" + ("" if report.key_pinned else " (not pinned: pass --public-key)")
        )
        checkpoint = manifest.get("checkpoint")
        if checkpoint:
            if checkpoint.get("key_id") != report.key_id:
                report.checks.append(f"checkpoint: signed by another key ({checkpoint.get('key_id')}), not checked")
            elif not _check_signature(carried_key, checkpoint.get("signature", ""), checkpoint_message(
                position=checkpoint.get("position"), hash=checkpoint.get("hash"),
                time=checkpoint.get("time"), key_id=checkpoint.get("key_id"),
            )):
                raise Refused("bad signature on the checkpoint in the manifest")
            else:
                report.checks.append(f"checkpoint: good, head at event {checkpoint['position']} at {checkpoint['time']}")
        export = manifest["export"]
        kind = export.get("format")
        try:
            digest, size = _file_digest(export_path)
        except OSError as exc:
            raise Unusable(f"cannot read the export: {exc}") from None
        if kind in ("csv", "jsonl"):
            rows = (_csv_rows(export_path, line_starts=export.get("csv_escape") == CSV_ESCAPE) if kind == "csv"
                    else _jsonl_rows(export_path))
            _check_rows(rows, manifest, report)
        elif kind != "pdf":
            raise Unusable(f"unknown export format {kind!r}")
        if digest != export.get("sha256") or size != export.get("bytes"):
            raise Refused(f"the file's SHA-256 {digest} ({size} bytes) differs from the manifest's")
        report.checks.append(f"file: SHA-256 {digest}, {size} bytes, as signed")
    except Refused as refused:
        report.problem = str(refused)
        report.first_bad_line = refused.line
        return report
    report.ok = True
    return report


def describe(report: Report, export_path: str) -> str:
    lines = [f"  ok  {check}" for check in report.checks]
    if report.ok:
        lines.append(f"VERIFIED: {export_path}")
    else:
        where = f"line {report.first_bad_line}: " if report.first_bad_line else ""
        lines.append(f"REFUSED: {where}{report.problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a pamportal audit export against its signed manifest.")
    parser.add_argument("export")
    parser.add_argument("manifest")
    parser.add_argument("--public-key", help="the node's audit key: key id, base64 or PEM (or @FILE)")
    args = parser.parse_args(argv)
    key = args.public_key
    if key and key.startswith("@"):
        with open(key[1:], encoding="ascii") as handle:
            key = handle.read()
    try:
        report = verify(args.export, args.manifest, public_key=key)
    except Unusable as exc:
        print(f"UNUSABLE: {exc}", file=sys.stderr)
        return 2
    print(describe(report, args.export))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
