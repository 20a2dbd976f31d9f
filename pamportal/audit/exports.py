"""Writing audit exports: CSV and JSON Lines rows streamed into a file in constant
memory (``COPY ... TO STDOUT`` on PostgreSQL, a chunked iterator elsewhere), and the
signed manifest that goes with each file.

An export is bounded by the chain head read when it was asked for (``upto_position``):
events are never changed once committed, so the same filters and bound always give
the same rows, whenever the file is written. On PostgreSQL the database formats each
row; elsewhere Python does, to the same rules (the verifier reads either).
"""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

from django.db import connection, transaction
from django.db.models.expressions import RawSQL
from django.utils import timezone as dj_timezone

from pamportal.core.files import private_file
from pamportal.jobs.services import job_create
from pamportal.nodes.selectors import node_address

from . import chain, conf, offline
from .actions import AuditAction
from .models import AuditChainStatus, AuditCheckpoint, AuditExport
from .selectors import audit_event_list, audit_head
from .services import audit_record
from .signing import signing_key_load

FETCH = 5000
# PostgreSQL formats the rows and ``COPY ... TO STDOUT`` streams them, one CopyData
# message per row, so each row's position and hash are read off its ends. CSV cells a
# spreadsheet could run (or control chars) get a ' in front, at the cell's start and
# after each line break inside it (offline.csv_escape). COPY quotes CR, LF, , and ".
_PG_TIME = "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_PG_LINES = (
    r"regexp_replace({c}, '(\r\n|[\n\x0b\x0c\r\x1c-\x1e\u0085\u2028\u2029])"
    r"(?=[-=+@''\x01-\x09\x0e-\x1b\x1f\x7f])', '\1''', 'g')"
)
_PG_ESC = (
    "CASE WHEN ascii({c}) IN (61, 43, 45, 64, 39, 127) OR ascii({c}) BETWEEN 1 AND 31 "
    "THEN chr(39) || " + _PG_LINES + " ELSE " + _PG_LINES + " END"
)
_TEXT_COLUMNS = ("actor_name", "source_ip", "request_id", "action", "target", "outcome", "details", "prev_hash", "hash")
_PG_CSV_COLUMNS = ["position", _PG_TIME, _PG_ESC.format(c="COALESCE(actor_id::text, '')")] + [
    _PG_ESC.format(c=c) for c in _TEXT_COLUMNS
]
_PG_JSON_LINE = (
    "'{\"position\":' || position || ',\"time\":\"' || " + _PG_TIME + " || '\",\"actor_id\":' || "
    "COALESCE(actor_id::text, 'null') || "
    + " || ".join(f"',\"{c}\":' || to_json({c})::text" for c in _TEXT_COLUMNS)
    + " || '}'"
)
# One column of JSON, which never holds a raw control character: CSV mode with a quote
# and a delimiter that cannot occur in it writes each value exactly as it is.
_PG_COPY_JSON = "COPY ({sql}) TO STDOUT (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
_PG_COPY_CSV = "COPY ({sql}) TO STDOUT (FORMAT csv)"


@dataclass
class ExportStats:
    """What a pass over the rows learnt, for the manifest."""

    count: int = 0
    first: dict | None = None
    last: dict | None = None
    first_time: str | None = None
    last_time: str | None = None
    events: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    file: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    size: int = 0

    def add_rows(self, positions_hashes_times: list[tuple[int, str, str]]) -> None:
        if not positions_hashes_times:
            return
        first, last = positions_hashes_times[0], positions_hashes_times[-1]
        if self.first is None:
            self.first = {"position": first[0], "hash": first[1]}
            self.first_time = first[2]
        self.last = {"position": last[0], "hash": last[1]}
        self.last_time = last[2]
        self.count += len(positions_hashes_times)
        self.events.update(("\n".join(r[1] for r in positions_hashes_times) + "\n").encode("ascii"))


def export_queryset(filters: dict, upto_position: int):
    return audit_event_list(**filters).filter(position__lte=upto_position).order_by("position")


def _filters_from_stored(stored: dict) -> dict:
    filters = dict(stored)
    for name in ("time_from", "time_to"):
        if filters.get(name):
            filters[name] = datetime.fromisoformat(filters[name])
    return filters


def _pg_chunks(filters: dict, upto: int, kind: str) -> Iterator[list[tuple]]:
    """(position, hash, time, line bytes) in chunks, from ``COPY ... TO STDOUT``."""
    qs = export_queryset(filters, upto)
    if kind == "csv":
        names = [f"c{i}" for i in range(len(_PG_CSV_COLUMNS))]
        qs = qs.annotate(**{n: RawSQL(sql, ()) for n, sql in zip(names, _PG_CSV_COLUMNS)}).values_list(*names)
        template = _PG_COPY_CSV
    else:
        qs = qs.annotate(line=RawSQL(_PG_JSON_LINE, ())).values_list("line")
        template = _PG_COPY_JSON
    sql, params = qs.query.get_compiler(using=qs.db).as_sql()
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        with cursor.copy(template.format(sql=sql), params or None) as copy:
            batch: list[tuple] = []
            for row in copy:  # one row per message
                batch.append(_pg_row_ends(bytes(row), kind))
                if len(batch) >= FETCH:
                    yield batch
                    batch = []
            if batch:
                yield batch


_HEX = frozenset("0123456789abcdef")


def _pg_row_ends(row: bytes, kind: str) -> tuple:
    """(position, hash, time, row): cheap slices for well-formed rows, a full parse
    for a row whose hash cell is not a plain hash (a damaged trail is exported too)."""
    if kind == "csv":
        head = row.split(b",", 2)
        position, time_text = int(head[0]), head[1].decode("ascii")
        digest = row[-65:-1].decode("ascii", "replace")
        if row[-66:-65] != b"," or set(digest) - _HEX:
            digest = offline.csv_unescape(next(csv.reader([row.decode("utf-8")]))[-1])
    else:
        end = row.index(b",", 12)
        position = int(row[12:end])
        time_text = row[end + 9: end + 36].decode("ascii")
        digest = row[-67:-3].decode("ascii", "replace")
        if row[-76:-67] != b',"hash":"' or row[-3:] != b'"}\n' or set(digest) - _HEX:
            digest = json.loads(row)["hash"]
    return position, digest, time_text, row


def _python_chunks(filters: dict, upto: int, kind: str) -> Iterator[list[tuple]]:
    qs = export_queryset(filters, upto).values_list(*chain.FIELDS, "hash")
    batch: list[tuple] = []
    for row in qs.iterator(chunk_size=FETCH):
        values = list(row)
        values[1] = chain.canonical_time(values[1])
        if kind == "csv":
            line = offline.csv_line(str(v) if v is not None else "" for v in values)
        else:
            line = json.dumps(dict(zip(offline.COLUMNS, values)), ensure_ascii=False, separators=(",", ":")) + "\n"
        batch.append((values[0], values[-1], values[1], line.encode("utf-8")))
        if len(batch) >= FETCH:
            yield batch
            batch = []
    if batch:
        yield batch


def encode(export_filters: dict, upto: int, kind: str, stats: ExportStats) -> Iterator[bytes]:
    """The export file's bytes, chunk by chunk, updating ``stats`` as they go."""
    if kind not in ("csv", "jsonl"):
        raise ValueError(f"not a row format: {kind}")
    if kind == "csv":  # with a BOM: spreadsheets read the file as UTF-8 only with one
        header = (offline.BOM + ",".join(offline.COLUMNS) + "\n").encode("utf-8")
        stats.file.update(header)
        stats.size += len(header)
        yield header
    if connection.vendor == "postgresql":
        chunks = _pg_chunks(export_filters, upto, kind)
    else:
        chunks = _python_chunks(export_filters, upto, kind)
    for rows in chunks:
        data = b"".join([r[3] for r in rows])
        stats.add_rows([(r[0], r[1], r[2]) for r in rows])
        stats.file.update(data)
        stats.size += len(data)
        yield data


def write_rows_file(export: AuditExport, *, progress: Callable[[int], None] | None = None) -> ExportStats:
    """Write the CSV/JSON Lines file of ``export`` (atomically: a temporary name, then
    renamed) and return what the manifest needs."""
    stats = ExportStats()
    path = conf.export_dir() / export.file_name
    filters = _filters_from_stored(export.filters)
    next_report = 100_000
    with transaction.atomic(), private_file(path) as handle:
        for chunk in encode(filters, export.upto_position, export.format, stats):
            handle.write(chunk)
            if progress is not None and stats.count >= next_report:
                progress(stats.count)
                next_report += 100_000
    return stats


def file_digest(path) -> tuple[str, int]:
    return offline._file_digest(str(path))


def build_manifest(export: AuditExport, *, stats: ExportStats | None, file_sha256: str, size: int,
                   contiguous: bool, verification: dict | None = None) -> dict:
    """The signed manifest (a dict; ``json.dumps`` it to hand out)."""
    key = signing_key_load()
    checkpoint = (
        AuditCheckpoint.objects.filter(key_id=key.key_id, position__lte=export.upto_position)
        .order_by("-position", "-time").first()
    )
    status = AuditChainStatus.objects.filter(pk=1).first()
    manifest = {
        "format": offline.MANIFEST_FORMAT,
        "export": {
            "id": str(export.id),
            "file": export.file_name,
            "format": export.format,
            "sha256": file_sha256,
            "bytes": size,
            **({"csv_escape": offline.CSV_ESCAPE} if export.format == AuditExport.Format.CSV else {}),
        },
        "node": node_address(),
        "created_at": chain.canonical_time(export.created_at),
        "created_by": export.created_by_name,
        "filters": {k: str(v) for k, v in sorted(export.filters.items())},
        "upto_position": export.upto_position,
        "contiguous": contiguous,
        "count": stats.count if stats else export.row_count,
        "time_range": {
            "from": export.filters.get("time_from"),
            "to": export.filters.get("time_to"),
            "first_event": stats.first_time if stats else None,
            "last_event": stats.last_time if stats else None,
        },
        "first": stats.first if stats else None,
        "last": stats.last if stats else None,
        "events_sha256": stats.events.hexdigest() if stats else None,
        "chain_status": None if status is None or status.checked_at is None else {
            "ok": status.ok,
            "verified_position": status.verified_position,
            "checked_at": chain.canonical_time(status.checked_at),
            "first_bad_position": status.first_bad_position,
            "reason": status.reason,
        },
        "checkpoint": None if checkpoint is None else {
            "position": checkpoint.position,
            "hash": checkpoint.hash,
            "time": chain.canonical_time(checkpoint.time),
            "key_id": checkpoint.key_id,
            "signature": checkpoint.signature,
        },
        "public_key": {"algorithm": "Ed25519", "key_id": key.key_id, "raw_base64": key.public_b64},
    }
    if verification is not None:
        manifest["verification"] = verification
    manifest["signature"] = {"algorithm": "Ed25519", "key_id": key.key_id, "value": key.sign(offline.manifest_message(manifest))}
    return manifest


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def is_contiguous(filters: dict) -> bool:
    return not filters


def events_in(filters: dict, upto: int) -> int:
    return export_queryset(filters, upto).count()


# --- services ------------------------------------------------------------------------
def _stored_filters(filters: dict) -> dict:
    """Filters as JSON: times in ISO form (UTC), empty ones dropped."""
    stored = {}
    for name, value in filters.items():
        if value in (None, ""):
            continue
        stored[name] = value.astimezone(timezone.utc).isoformat() if isinstance(value, datetime) else str(value)
    return stored


@transaction.atomic
def audit_export_create(*, user, format: str, filters: dict) -> AuditExport:
    """Record an export of the events matching ``filters`` up to the current head
    (audited). CSV/JSON Lines of at most ``conf.export_inline_max()`` events are for the
    caller to write at once (``audit_export_run``); larger ones and PDFs run as a job."""
    from .jobs import KIND  # local import: audit.jobs imports this module (a real cycle)

    fmt = AuditExport.Format(format)
    upto, _ = audit_head()
    stored = _stored_filters(filters)
    count = events_in(filters, upto)
    export_id = uuid.uuid4()
    stamp = dj_timezone.now().strftime("%Y%m%dT%H%M%SZ")
    extension = {"csv": "csv", "jsonl": "jsonl", "pdf": "pdf"}[fmt]
    export = AuditExport.objects.create(
        id=export_id,
        created_by=user,
        created_by_name=user.get_username() if user is not None else "system",
        format=fmt,
        filters=stored,
        upto_position=upto,
        expected_count=count,
        file_name=f"audit-{stamp}-{export_id.hex[:8]}.{extension}",
    )
    audit_record(
        action=AuditAction.AUDIT_EXPORTED, target=f"export:{export_id}",
        details={"format": fmt.value, "filters": stored, "events": count, "upto_position": upto},
    )
    if fmt == AuditExport.Format.PDF or count > conf.export_inline_max():
        job = job_create(kind=KIND, params={"export_id": str(export_id)}, created_by=user,
                         title=f"Audit export ({fmt.label}, {count} events)")
        export.job = job
        export.save(update_fields=["job"])
    return export


def audit_export_run(*, export_id, log: Callable[[str], None] | None = None) -> AuditExport:
    """Write the export's file and its signed manifest; idempotent (a rerun rewrites
    the same bytes for CSV/JSON Lines, as the rows up to the bound never change)."""
    export = AuditExport.objects.get(pk=export_id)
    AuditExport.objects.filter(pk=export.pk).update(state=AuditExport.State.RUNNING, error="")
    say = log or (lambda text: None)
    try:
        if export.format == AuditExport.Format.PDF:
            from .pdf import write_pdf_file  # local import: pdf imports this module (a real cycle)

            stats = write_pdf_file(export, log=say)
        else:
            stats = write_rows_file(export, progress=lambda n: say(f"{n:,} of {export.expected_count:,} events written"))
        path = conf.export_dir() / export.file_name
        if export.format == AuditExport.Format.PDF:
            digest, size = file_digest(path)
        else:  # hashed on the way out; no second read
            digest, size = stats.file.hexdigest(), stats.size
        manifest = build_manifest(export, stats=stats, file_sha256=digest, size=size,
                                  contiguous=is_contiguous(export.filters))
    except Exception as exc:
        AuditExport.objects.filter(pk=export.pk).update(
            state=AuditExport.State.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=dj_timezone.now()
        )
        raise
    AuditExport.objects.filter(pk=export.pk).update(
        state=AuditExport.State.READY, size=size, row_count=stats.count, manifest=manifest_text(manifest),
        finished_at=dj_timezone.now(),
    )
    say(f"{stats.count:,} events, {size:,} bytes, SHA-256 {digest}; manifest signed with key "
        f"{manifest['public_key']['key_id']}")
    export.refresh_from_db()
    return export
