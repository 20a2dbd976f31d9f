"""Exports and their offline verification: an intact export verifies with the command
and the standalone verifier; a changed byte, a removed line, swapped lines and a forged
manifest are each refused, naming the first bad line or the bad signature."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command

from pamportal.audit import offline
from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent
from pamportal.audit.signing import signing_key_load

from .reports import AWKWARD_TARGETS, export_to, make_trail

pytestmark = pytest.mark.django_db
REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "verify_audit_export.py"
EVENTS = 30


@pytest.fixture
def trail(db):
    make_trail(EVENTS)


def run_tool(export: Path, manifest: Path, *extra: str) -> subprocess.CompletedProcess:
    # -I: isolated, so nothing of the portal (or its settings) is importable from here.
    return subprocess.run(
        [sys.executable, "-I", str(TOOL), str(export), str(manifest), *extra],
        capture_output=True, text=True, timeout=60, cwd="/",
    )


def run_command(export: Path, manifest: Path, *extra: str) -> str:
    out = StringIO()
    call_command("audit_verify", "--export", str(export), "--manifest", str(manifest), *extra, stdout=out)
    return out.getvalue()


def refused_by_both(export: Path, manifest: Path, expected: str, *extra: str) -> None:
    tool = run_tool(export, manifest, *extra)
    assert tool.returncode == 1, tool.stdout + tool.stderr
    assert expected in tool.stdout, tool.stdout
    with pytest.raises(CommandError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run_command(export, manifest, *extra)


def test_the_standalone_verifier_is_the_portals_own_code():
    assert TOOL.read_text() == (REPO / "pamportal" / "audit" / "offline.py").read_text()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_intact_export_verifies_offline(trail, tmp_path, fmt):
    export, manifest_path, manifest = export_to(tmp_path, fmt=fmt)
    assert manifest["count"] == EVENTS and manifest["contiguous"] is True
    assert manifest["first"]["position"] == 1 and manifest["last"]["position"] == EVENTS
    assert manifest["last"]["hash"] == AuditEvent.objects.get(position=EVENTS).hash
    key = signing_key_load()
    assert manifest["public_key"]["raw_base64"] == key.public_b64
    tool = run_tool(export, manifest_path, "--public-key", key.key_id)
    assert tool.returncode == 0, tool.stdout + tool.stderr
    assert "VERIFIED" in tool.stdout and f"{EVENTS} events" in tool.stdout
    assert "VERIFIED" in run_command(export, manifest_path, "--public-key", key.public_b64)


def test_csv_formula_cells_are_escaped_and_still_verify(trail, tmp_path):
    export, manifest_path, _ = export_to(tmp_path, fmt="csv")
    assert export.read_bytes().startswith(b"\xef\xbb\xbfposition,time,")  # UTF-8 BOM, for spreadsheets
    with export.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(offline.COLUMNS)
    targets = [row[7] for row in rows[1:]]
    for cell in targets:
        assert cell[0] not in "=+-@\t" , cell
    assert targets[0] == "'" + AWKWARD_TARGETS[0] + " #0"  # =HYPERLINK...
    assert targets[1] == "'+1+1 #1" and targets[2] == "'-2 #2" and targets[3] == "'@SUM(A1) #3"
    assert targets[4] == "'\tTAB #4" and targets[5] == "''quoted #5"
    assert targets[7] == "plain #7"
    assert run_tool(export, manifest_path).returncode == 0


def test_events_digest_is_the_same_for_csv_and_jsonl(trail, tmp_path):
    # The first export's own audit event is not alice's, so both cover the same events.
    _, _, csv_manifest = export_to(tmp_path / "c", fmt="csv", filters={"actor": "alice"})
    _, _, jsonl_manifest = export_to(tmp_path / "j", fmt="jsonl", filters={"actor": "alice"})
    assert csv_manifest["count"] == jsonl_manifest["count"] == EVENTS
    assert csv_manifest["events_sha256"] == jsonl_manifest["events_sha256"]
    assert csv_manifest["export"]["sha256"] != jsonl_manifest["export"]["sha256"]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("fmt,header", [("csv", 1), ("jsonl", 0)])
def test_one_byte_changed_is_named(trail, tmp_path, fmt, header):
    export, manifest, _ = export_to(tmp_path, fmt=fmt)
    lines = _lines(export)
    index = header + 11  # event 12
    assert b"plain #7" not in lines[index]
    lines[index] = lines[index].replace(b"#11", b"#19", 1)
    export.write_bytes(b"".join(lines))
    refused_by_both(export, manifest, f"line {index + 1}: event 12 does not match its hash")


@pytest.mark.parametrize("fmt,header", [("csv", 1), ("jsonl", 0)])
def test_one_line_removed_is_named(trail, tmp_path, fmt, header):
    export, manifest, _ = export_to(tmp_path, fmt=fmt)
    lines = _lines(export)
    del lines[header + 16]  # event 17
    export.write_bytes(b"".join(lines))
    refused_by_both(export, manifest, f"line {header + 17}: event 18 follows event 16: event 17 is missing")


@pytest.mark.parametrize("fmt,header", [("csv", 1), ("jsonl", 0)])
def test_two_lines_swapped_are_named(trail, tmp_path, fmt, header):
    export, manifest, _ = export_to(tmp_path, fmt=fmt)
    lines = _lines(export)
    a = header + 9  # events 10 and 11
    lines[a], lines[a + 1] = lines[a + 1], lines[a]
    export.write_bytes(b"".join(lines))
    refused_by_both(export, manifest, f"line {a + 1}: event 11 follows event 9: event 10 is missing")


def test_last_line_removed_is_refused(trail, tmp_path):
    export, manifest, _ = export_to(tmp_path, fmt="jsonl")
    export.write_bytes(b"".join(_lines(export)[:-1]))
    refused_by_both(export, manifest, f"the file holds {EVENTS - 1} events, the manifest says {EVENTS}")


def test_swapped_lines_in_a_filtered_export_are_named(trail, tmp_path):
    export, manifest, data = export_to(tmp_path, fmt="jsonl", filters={"outcome": "denied"})
    assert data["contiguous"] is False and data["count"] == 20
    lines = _lines(export)
    positions = [json.loads(line)["position"] for line in lines]
    lines[3], lines[4] = lines[4], lines[3]
    export.write_bytes(b"".join(lines))
    refused_by_both(export, manifest, f"line 5: event {positions[3]} comes after event {positions[4]}")


def test_filtered_export_verifies_and_a_removed_row_is_refused(trail, tmp_path):
    export, manifest, data = export_to(tmp_path, fmt="csv", filters={"outcome": "denied"})
    assert data["filters"] == {"outcome": "denied"}
    assert run_tool(export, manifest).returncode == 0
    lines = _lines(export)
    del lines[5]
    export.write_bytes(b"".join(lines))
    refused_by_both(export, manifest, "the file holds 19 events, the manifest says 20")


def test_forged_manifest_is_refused_for_its_signature(trail, tmp_path):
    export, manifest_path, manifest = export_to(tmp_path, fmt="csv")
    manifest["count"] = EVENTS - 1
    manifest_path.write_text(json.dumps(manifest, indent=2))
    refused_by_both(export, manifest_path, "bad signature")


def test_manifest_re_signed_with_another_key_is_refused_when_the_key_is_pinned(trail, tmp_path):
    export, manifest_path, manifest = export_to(tmp_path, fmt="csv")
    real_key_id = manifest["public_key"]["key_id"]
    lines = _lines(export)
    del lines[3]  # then make the manifest fit the shortened file, signed by mallory
    export.write_bytes(b"".join(lines))
    mallory = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = mallory.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    manifest["public_key"] = {"algorithm": "Ed25519", "key_id": offline.key_id_of(raw), "raw_base64": base64.b64encode(raw).decode()}
    manifest["checkpoint"] = None
    manifest["contiguous"] = False
    manifest["count"] = EVENTS - 1
    manifest["first"] = {"position": 1, "hash": AuditEvent.objects.get(position=1).hash}
    import hashlib

    manifest["events_sha256"] = hashlib.sha256(
        "".join(e.hash + "\n" for e in AuditEvent.objects.filter(position__lte=EVENTS).exclude(position=3).order_by("position")).encode()
    ).hexdigest()
    manifest["export"]["sha256"] = hashlib.sha256(export.read_bytes()).hexdigest()
    manifest["export"]["bytes"] = export.stat().st_size
    manifest["signature"] = {"algorithm": "Ed25519", "key_id": offline.key_id_of(raw),
                             "value": base64.b64encode(mallory.sign(offline.manifest_message(manifest))).decode()}
    manifest_path.write_text(json.dumps(manifest))
    # Unpinned, the forgery is self-consistent; the output says the key was not pinned.
    unpinned = run_tool(export, manifest_path)
    assert unpinned.returncode == 0 and "not pinned" in unpinned.stdout
    refused_by_both(export, manifest_path, f"not the expected key {real_key_id}", "--public-key", real_key_id)


def test_an_added_line_is_named(trail, tmp_path):
    export, manifest, _ = export_to(tmp_path, fmt="jsonl")
    export.write_bytes(export.read_bytes() + b"\n")
    refused_by_both(export, manifest, f"line {EVENTS + 1}: it is not JSON")


def test_checkpoint_in_the_manifest_is_checked(trail, tmp_path, settings):
    from pamportal.audit.checkpoints import audit_checkpoint_periodic

    assert audit_checkpoint_periodic()["ok"]
    export, manifest_path, manifest = export_to(tmp_path, fmt="csv")
    assert manifest["checkpoint"]["position"] == EVENTS
    manifest_ok = run_tool(export, manifest_path)
    assert f"checkpoint: good, head at event {EVENTS}" in manifest_ok.stdout


def test_not_a_manifest_is_unusable(trail, tmp_path):
    export, manifest, _ = export_to(tmp_path, fmt="csv")
    manifest.write_text("{}")
    tool = run_tool(export, manifest)
    assert tool.returncode == 2 and "not a pamportal audit export manifest" in tool.stderr


def test_export_is_an_audit_event(trail, tmp_path):
    export_to(tmp_path, fmt="csv", filters={"actor": "ali"})
    event = AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).get()
    details = json.loads(event.details)
    assert details["format"] == "csv" and details["filters"] == {"actor": "ali"} and details["events"] == EVENTS


# --- line breaks inside cells (CR, CRLF, lone CR, LF, U+2028, NEL...) -------------------
def test_csv_escape_round_trips_and_quotes_every_line_break():
    import itertools

    alphabet = ["a", "\r", "\n", "'", "=", "-", "\u2028", "\x85", "\t", ",", '"']
    for length in range(5):
        for chars in itertools.product(alphabet, repeat=length):
            value = "".join(chars)
            escaped = offline.csv_escape(value)
            assert offline.csv_unescape(escaped) == value, (value, escaped)
            line = offline.csv_line([value, "next"])
            assert list(csv.reader(StringIO(line, newline=""), strict=True)) == [[escaped, "next"]], (value, line)
            for text_line in line.splitlines():  # what a reader that splits on any break sees
                assert text_line[:1] not in set("=+-@"), (value, line)


def test_line_breaks_in_cells_are_quoted_and_still_verify(admin_user, client, tmp_path):
    from .reports import FAILED_LOGIN_USERNAME, make_line_break_trail

    make_line_break_trail(client)
    login = AuditEvent.objects.get(action=AuditAction.LOGIN_FAILED, target__startswith="user:")
    assert "\r" in login.actor_name and login.actor_name == FAILED_LOGIN_USERNAME  # stored as typed, no login needed
    export, manifest_path, manifest = export_to(tmp_path, fmt="csv")
    stored = {e.position: e for e in AuditEvent.objects.filter(position__lte=manifest["upto_position"])}
    assert manifest["count"] == len(stored) and manifest["export"]["csv_escape"] == "line-starts"
    # Both verifiers accept it.
    tool = run_tool(export, manifest_path)
    assert tool.returncode == 0, tool.stdout + tool.stderr
    assert "VERIFIED" in run_command(export, manifest_path)
    # csv reads exactly one row per event, as the manifest counts, whatever the newline mode.
    for newline in ("", None):
        with export.open(newline=newline, encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle, strict=True))
        assert rows[0] == list(offline.COLUMNS) and len(rows) - 1 == manifest["count"], newline
    with export.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle, strict=True))[1:]
    for row in rows:
        event = stored[int(row[0])]
        assert [offline.csv_unescape(c) for c in row[3:5] + row[7:8]] == [event.actor_name, event.source_ip, event.target]
    # No line of the file, split at any line break, starts with something a spreadsheet runs.
    text = export.read_bytes().decode("utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        assert line[:1] not in set("=+-@"), (number, line)
    # Every cell that holds a CR, LF or another break is quoted (a bare CR ends a row for many readers).
    raw = export.read_bytes()
    assert b"x\r'=9+9" in raw and b'"x\r\'=9+9"' in raw
    assert '"u2028\u2028\'-3"'.encode() in raw and '"nel\x85\'=4"'.encode() in raw


def test_jsonl_with_line_breaks_verifies(admin_user, client, tmp_path):
    from .reports import make_line_break_trail

    make_line_break_trail(client)
    export, manifest_path, manifest = export_to(tmp_path, fmt="jsonl")
    assert len(export.read_bytes().split(b"\n")) - 1 == manifest["count"]
    assert run_tool(export, manifest_path).returncode == 0
