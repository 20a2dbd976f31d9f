"""``manage.py backup`` and ``manage.py restore`` on real nodes, on the backend the suite
runs on (SQLite, or PostgreSQL with ``DATABASE_URL``): the archive, its proof, a round
trip onto a fresh node whose audit chain verifies to the manifest's head, and every
refusal with its own message, leaving the fresh node as it was."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pamportal.backups.archive import ArchiveError
from pamportal.crypto import ca, mek
from pamportal.crypto.ca import cluster_id_of
from pamportal.nodes.keys import mek_file_text
from tests.backups.conftest import COUNTS, state_of
from tests.backups.helpers import extract, flip, layout, repack
from tests.support.cluster import USERS, run
from tests.support.node import REPO, NodeEnv, using_postgres

pytestmark = pytest.mark.processes

NODE_FILES = ["node/tls/cluster-ca.crt", "node/tls/node.crt", "node/tls/node.key", "node/totp-seal.key"]


def _mek_file(path, key: bytes):
    path.write_text(mek_file_text(address="node1.example.com", encoded=mek.encode(key), when=datetime.now(timezone.utc)))
    return path


def test_backup_writes_one_proven_archive_under_its_final_name(source):
    assert "proof: passed" in source.stdout
    assert re.search(r"^size: \d+ bytes$", source.stdout, re.M)
    cluster = cluster_id_of(ca.certificate_info((source.env.data_dir / "tls" / "cluster-ca.crt").read_bytes()).sha256)
    assert re.fullmatch(rf"pamportal-backup-{cluster}-\d{{8}}T\d{{6}}Z\.pambak", source.archive.name)
    assert source.archive.parent == source.env.data_dir / "backups"
    assert hashlib.sha256(source.archive.read_bytes()).hexdigest() == source.sha256
    assert stat.S_IMODE(source.archive.stat().st_mode) == 0o600
    # No temporary archive, staging copy or proof scratch area is left behind.
    assert [p.name for p in source.archive.parent.iterdir() if p.name.startswith(".")] == [".lock"]
    row = run(source.env, f"""
import json
from pamportal.backups.models import Backup
from pamportal.audit.models import AuditEvent
b = Backup.objects.get(archive_name={source.archive.name!r})
e = AuditEvent.objects.filter(action="backup.created", target="backup:" + b.archive_name).get()
result = {{"state": b.state, "proof_ok": b.proof_ok, "sha256": b.sha256, "size": b.size,
          "head": [b.audit_position, b.audit_hash], "details": json.loads(e.details), "proof": b.proof_details,
          "write": b.write_seconds, "prove": b.proof_seconds}}
""")
    assert row["state"] == "proven" and row["proof_ok"] is True
    assert row["sha256"] == source.sha256 and row["size"] == source.archive.stat().st_size
    assert row["details"]["archive"] == source.archive.name and row["details"]["sha256"] == source.sha256
    assert row["proof"]["verified_events"] == row["head"][0] >= source.counts["head"][0]
    assert row["proof"]["engine"] == ("postgresql" if using_postgres() else "sqlite")
    assert row["write"] > 0 and row["prove"] > 0


def test_the_archive_holds_a_signed_manifest_and_the_node_files_never_the_mek(source, tmp_path):
    extracted = extract(source.archive, source.mek, tmp_path / "out")
    manifest = extracted.manifest
    assert extracted.chunks >= 3  # small chunks in these tests: first, middle and last exist
    data = source.env.data_dir
    assert manifest["cluster_id"] == extracted.header.cluster_id
    assert manifest["app_version"] == "1.0.0" and isinstance(manifest["members"], list)
    assert "0012_backup_actions" in manifest["migrations"]["audit"]
    assert manifest["migrations"]["backups"] == ["0001_initial"]
    names = sorted(f["name"] for f in manifest["files"])
    database_file = "database/pamportal.dump" if using_postgres() else "database/pamportal.sqlite3"
    assert names == sorted([database_file, *NODE_FILES])
    for entry in manifest["files"]:
        content = extracted.files[entry["name"]].read_bytes()
        assert hashlib.sha256(content).hexdigest() == entry["sha256"] and len(content) == entry["size"]
        assert source.mek not in content
        if entry["kind"] == "node-file":
            assert content == (data / entry["name"][len("node/"):]).read_bytes()
    # The head is the dump's, and it is the event at that position on the node.
    event = run(source.env, f"""
from pamportal.audit.models import AuditEvent, AuditSigningKey
result = {{"hash": AuditEvent.objects.get(position={manifest['audit_head']['position']}).hash,
          "key": AuditSigningKey.objects.get(retired_at__isnull=True).public_key}}
""")
    assert event["hash"] == manifest["audit_head"]["hash"]
    # Signed with the node's audit signing key.
    assert manifest["public_key"]["raw_base64"] == event["key"]
    assert manifest["signature"]["key_id"] == manifest["public_key"]["key_id"]


def test_restore_onto_a_fresh_node_round_trips(source, fresh, tmp_path):
    key_file = _mek_file(tmp_path / "mek.txt", source.mek)
    out = fresh.manage("restore", str(source.archive), "--mek-file", str(key_file), timeout=300)
    head = re.search(r"audit head restored to event (\d+), ([0-9a-f]{64})", out.stdout)
    manifest = extract(source.archive, source.mek, tmp_path / "m").manifest
    assert [int(head.group(1)), head.group(2)] == [manifest["audit_head"]["position"], manifest["audit_head"]["hash"]]

    verified = fresh.manage("audit_verify").stdout
    position = manifest["audit_head"]["position"] + 1  # and backup.restored after it
    assert f"head at position {position}," in verified

    counts = run(fresh, COUNTS)
    for name in ("users", "licences", "totp", "certificates"):
        assert counts[name] == source.counts[name], name
    assert counts["licences"] and len(counts["users"]) == 3 and counts["totp"] == 3
    restored = run(fresh, """
import json
from pamportal.audit.models import AuditEvent
from pamportal.backups.models import Backup
e = AuditEvent.objects.order_by("-position").first()
result = {"action": e.action, "target": e.target, "details": json.loads(e.details),
          "running": Backup.objects.filter(state="running").count()}
""")
    assert restored["action"] == "backup.restored" and restored["target"] == f"backup:{source.archive.name}"
    assert restored["details"]["archive"] == source.archive.name
    assert restored["details"]["audit_position"] == manifest["audit_head"]["position"]
    assert restored["details"]["audit_hash"] == manifest["audit_head"]["hash"]
    assert restored["running"] == 0  # the backup in progress in the dump does not stay "running"
    for name in ("tls/node.crt", "tls/node.key", "tls/cluster-ca.crt", "totp-seal.key"):
        assert (fresh.data_dir / name).read_bytes() == (source.env.data_dir / name).read_bytes(), name
    assert (fresh.data_dir / "mek.key").read_bytes() == source.mek
    assert stat.S_IMODE((fresh.data_dir / "tls" / "node.key").stat().st_mode) == 0o600
    assert not [p.name for p in fresh.data_dir.iterdir() if p.name.startswith(".restore")]

    # A second restore onto the node, now set up, is refused.
    again = fresh.manage("restore", str(source.archive), "--mek-file", str(key_file), check=False)
    assert again.returncode == 3 and "refused (not_fresh)" in again.stderr


def _header_flip(source, tmp_path):
    return flip(source.archive.read_bytes(), 20)  # inside the header's JSON


def _chunk_flip(which):
    def make(source, tmp_path):
        data = source.archive.read_bytes()
        _, chunks = layout(data)
        index = {"middle": len(chunks) // 2, "last": len(chunks) - 1}[which]
        offset, length = chunks[index]
        return flip(data, offset + length // 2)
    return make


def _truncated(source, tmp_path):
    data = source.archive.read_bytes()
    _, chunks = layout(data)
    offset, length = chunks[1]
    return data[: offset + length]  # whole chunks, the final one missing


def _forged_manifest(source, tmp_path):
    def edit(manifest):
        manifest["audit_head"]["position"] -= 1

    return repack(source.archive, source.mek, tmp_path, edit).read_bytes()


def _resigned_manifest(source, tmp_path):
    from pamportal.crypto import ed25519

    def edit(manifest):
        manifest["app_version"] = "9.9.9"

    return repack(source.archive, source.mek, tmp_path, edit, resign_with=ed25519.generate()).read_bytes()


def _not_an_archive(source, tmp_path):
    return b"PK\x03\x04" + os.urandom(200)


REFUSALS = {
    "header": (_header_flip, "tampered", "header does not match its checksum"),
    "middle_chunk": (_chunk_flip("middle"), "tampered", "does not authenticate"),
    "last_chunk": (_chunk_flip("last"), "tampered", "does not authenticate"),
    "truncated": (_truncated, "truncated", "cut short (truncated)"),
    "forged_signature": (_forged_manifest, "forged_signature", "signature does not verify"),
    "signed_by_another_key": (_resigned_manifest, "forged_signature", "not an audit signing key of the backed-up"),
    "not_an_archive": (_not_an_archive, "not_an_archive", "not a pamportal backup archive"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_damaged_or_forged_archive_is_refused_and_nothing_changes(name, source, fresh, tmp_path):
    make, code, words = REFUSALS[name]
    damaged = tmp_path / f"{name}.pambak"
    damaged.write_bytes(make(source, tmp_path))
    key_file = _mek_file(tmp_path / "mek.txt", source.mek)
    fresh.manage("check")  # the first start writes the data dir's own files (secret key, log)
    before = state_of(fresh)
    result = fresh.manage("restore", str(damaged), "--mek-file", str(key_file), check=False, timeout=300)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"refused ({code})" in result.stderr and words in result.stderr, result.stderr
    assert "Nothing on this node was changed" in result.stderr
    assert state_of(fresh) == before


def test_a_wrong_mek_is_refused_with_its_own_message(source, fresh, tmp_path):
    fresh.manage("check")
    before = state_of(fresh)
    result = fresh.manage("restore", str(source.archive), "--mek-file",
                          str(_mek_file(tmp_path / "other.txt", os.urandom(32))), check=False)
    assert result.returncode == 3 and "refused (wrong_mek)" in result.stderr and "(wrong MEK)" in result.stderr
    assert state_of(fresh) == before
    # A typo is caught by the key's checksum before the archive is even opened.
    typo = tmp_path / "typo.txt"
    text = mek.encode(source.mek)
    typo.write_text(text[:-1] + ("A" if text[-1] != "A" else "B") + "\n")
    result = fresh.manage("restore", str(source.archive), "--mek-file", str(typo), check=False)
    assert result.returncode == 2 and "MEK file cannot be used" in result.stderr
    assert state_of(fresh) == before


def test_an_archive_of_another_cluster_is_refused(source, fresh, tmp_path):
    other = ca.create_ca(name="another cluster CA")
    (fresh.data_dir / "tls").mkdir(mode=0o700)
    (fresh.data_dir / "tls" / "cluster-ca.crt").write_bytes(other.cert_pem)
    fresh.manage("check")
    before = state_of(fresh)
    result = fresh.manage("restore", str(source.archive), "--mek-file",
                          str(_mek_file(tmp_path / "mek.txt", source.mek)), check=False, timeout=300)
    assert result.returncode == 3 and "refused (wrong_cluster)" in result.stderr, result.stderr
    assert cluster_id_of(ca.certificate_info(other.cert_pem).sha256) in result.stderr
    assert state_of(fresh) == before


def test_each_refusal_has_its_own_code():
    codes = {code for _, code, _ in REFUSALS.values()} | {"wrong_mek", "wrong_cluster"}
    assert codes == {"tampered", "truncated", "forged_signature", "not_an_archive", "wrong_mek", "wrong_cluster"}
    assert ArchiveError("x", "y").code == "x"


# --- the proof fails: the backup is marked failed --------------------------------------------

CORRUPT = """
import json
from pathlib import Path
from pamportal.backups import database
from pamportal.backups.services import backup_run
from pamportal.audit.models import AuditEvent

real_dump = database.dump

def corrupted_dump(source, staging):
    path, facts = real_dump(source, staging)
    how = {how!r}
    edit = "UPDATE audit_auditevent SET target = 'user:someone-else' WHERE position = 5"
    if how == "chain" and source.engine == "sqlite":  # an event edited in the copy, after its facts were read
        import sqlite3
        conn = sqlite3.connect(path)
        conn.execute("DROP TRIGGER audit_event_no_update")
        conn.execute(edit)
        conn.commit()
        conn.close()
    elif how == "chain":  # the same through a scratch database, dumped again over the dump
        import psycopg
        with database.pg_scratch(source.params) as scratch:
            database.pg_restore(scratch, path)
            with psycopg.connect(database._conninfo(scratch), autocommit=True) as conn:
                conn.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update")
                conn.execute(edit)
            database._run_tool(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={{path}}"],
                               scratch, "pg_dump")
    elif how == "head":  # the manifest would state a head the dump does not have
        facts.audit_position -= 1
    elif how == "counts":  # ... or a row the dump does not hold
        facts.row_counts["accounts_user"] += 1
    else:  # the second half of the dump overwritten
        data = bytearray(path.read_bytes())
        half = len(data) // 2
        data[half:] = b"Z" * (len(data) - half)
        path.write_bytes(bytes(data))
    return path, facts

database.dump = corrupted_dump
b = backup_run()
e = AuditEvent.objects.order_by("-position").first()
result = {{"state": b.state, "proof_ok": b.proof_ok, "reason": b.proof_reason, "failure": b.failure_reason,
          "archive": b.archive_name, "action": e.action, "outcome": e.outcome, "details": json.loads(e.details)}}
"""


@pytest.mark.parametrize("how", ["garbage", "chain", "head", "counts"])
def test_a_backup_whose_proof_fails_is_marked_failed_and_audited(how, source):
    out = run(source.env, CORRUPT.format(how=how))
    assert out["state"] == "failed" and out["proof_ok"] is False
    assert out["reason"] and out["failure"] == out["reason"]
    if how == "chain":
        assert "audit chain of the restored copy is broken at event 5" in out["reason"]
    elif how == "head":
        assert "audit head" in out["reason"] and "is not the manifest's" in out["reason"]
    elif how == "counts":
        assert "row counts differ from the manifest's" in out["reason"] and "accounts_user" in out["reason"]
    elif using_postgres():
        assert "pg_restore failed" in out["reason"]
    else:
        assert "integrity_check" in out["reason"] or "cannot be read" in out["reason"]
    assert out["action"] == "backup.failed" and out["outcome"] == "failed"
    assert out["details"]["archive"] == out["archive"] and out["details"]["reason"] == out["reason"]


def test_a_write_cut_short_leaves_no_archive_under_a_final_name(source):
    before = sorted(p.name for p in source.archive.parent.iterdir())
    out = run(source.env, """
from pamportal.backups import services

def dies_half_way(out, **kwargs):
    out.write(b"PAMBAK\\r\\n" + b"x" * 1000)
    raise OSError(28, "No space left on device")

services.archive_write = dies_half_way
b = services.backup_run()
result = {"state": b.state, "failure": b.failure_reason, "archive": b.archive_name}
""")
    assert out["state"] == "failed" and "No space left on device" in out["failure"] and out["archive"] == ""
    assert sorted(p.name for p in source.archive.parent.iterdir()) == before


def test_not_enough_free_space_refuses_before_anything_is_written(source):
    before = sorted(p.name for p in source.archive.parent.iterdir())
    out = run(source.env, """
from collections import namedtuple
from pamportal.backups import services

Usage = namedtuple("Usage", "total used free")
services.shutil.disk_usage = lambda path: Usage(10**9, 10**9 - 10 * 2**20, 10 * 2**20)
b = services.backup_run()
result = {"state": b.state, "failure": b.failure_reason, "archive": b.archive_name}
""")
    assert out["state"] == "failed" and out["archive"] == ""
    assert "Not enough free space" in out["failure"] and "10 MiB free" in out["failure"]
    assert sorted(p.name for p in source.archive.parent.iterdir()) == before


def test_the_backup_job_writes_a_proven_backup(source):
    from pamportal.jobs import registry

    kind = registry.get("backups.backup")
    assert [step.name for step in kind.steps] == ["backup"] and kind.runs_on == registry.RUNS_ON_LEADER
    out = run(source.env, """
from django.contrib.auth import get_user_model
from pamportal.backups.models import Backup
from pamportal.jobs.engine import job_execute
from pamportal.jobs.models import OutputLine
from pamportal.backups.jobs import KIND
from pamportal.jobs.services import job_create
job = job_create(kind=KIND, created_by=get_user_model().objects.get(username="olga"), enqueue=False)
outcome = job_execute(job_id=job.pk, worker_id="test-worker")
b = Backup.objects.get(job_id=job.pk)
result = {"outcome": outcome, "state": b.state, "by": b.created_by_name, "archive": b.archive_name,
          "lines": list(OutputLine.objects.filter(job_id=job.pk).values_list("text", flat=True))}
""")
    assert out["outcome"] == "succeeded" and out["state"] == "proven" and out["by"] == "olga"
    assert (source.archive.parent / out["archive"]).is_file()
    assert any("proof passed" in line for line in out["lines"])


# --- retention ------------------------------------------------------------------------------

RETENTION = USERS + """
from pamportal.audit.models import AuditEvent
from pamportal.backups import database
from pamportal.backups.services import archive_path, backup_run
from pamportal.setup import wizard
from tests.setup.helpers import through_mek
admin = user('admin', Role.ADMINISTRATOR)
through_mek(admin)
wizard.setup_finalise(user=admin)

def exists(b):
    return archive_path(b).exists()

first, second = backup_run(), backup_run()
after_two = [exists(first), exists(second)]
real_dump = database.dump

def lying_dump(source, staging):
    path, facts = real_dump(source, staging)
    facts.audit_position -= 1
    return path, facts

database.dump = lying_dump
failed = backup_run()
failed_kept = exists(failed)  # no proven backup newer than it yet
database.dump = real_dump
third = backup_run()
rows = {b.pk: b for b in type(first).objects.all()}
result = {
    "states": [first.state, second.state, failed.state, third.state],
    "after_two": after_two, "failed_kept": failed_kept,
    "now": [exists(b) for b in (first, second, failed, third)],
    "pruned": [rows[b.pk].pruned_at is not None for b in (first, second, failed, third)],
    "events": list(AuditEvent.objects.filter(action="backup.pruned").order_by("position").values_list("target", flat=True)),
    "names": [b.archive_name for b in (first, second, failed, third)],
}
"""


def test_retention_keeps_the_newest_proven_and_prunes_only_behind_a_newer_proven_one(tmp_path):
    env = NodeEnv(tmp_path / "retention", PAM_BACKUP_KEEP="2")
    try:
        env.manage("migrate", "--noinput", timeout=300)
        out = run(env, RETENTION)
    finally:
        env.stop()
    assert out["states"] == ["proven", "proven", "failed", "proven"]
    assert out["after_two"] == [True, True] and out["failed_kept"] is True
    assert out["now"] == [False, True, False, True]
    assert out["pruned"] == [True, False, True, False]
    assert out["events"] == [f"backup:{out['names'][0]}", f"backup:{out['names'][2]}"]


WRITER = """
import time
from django.db import transaction
from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
end = time.time() + {seconds}
n = 0
while time.time() < end:
    with transaction.atomic():
        audit_record(action=AuditAction.LOGIN_FAILED, target="user:busy", details={{"n": n}})
    n += 1
print("wrote", n)
"""


def test_a_backup_taken_while_the_trail_grows_is_consistent_and_proven(source, tmp_path):
    writer = subprocess.Popen([sys.executable, str(REPO / "manage.py"), "shell", "-c", WRITER.format(seconds=6)],
                              cwd=REPO, env=source.env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # the writer is appending
        out = source.env.manage("backup", timeout=300).stdout
    finally:
        stdout, stderr = writer.communicate(timeout=60)
    assert writer.returncode == 0, stderr
    assert "proof: passed" in out
    written = int(re.search(r"wrote (\d+)", stdout).group(1))
    archive = re.search(r"^archive: (.+)$", out, re.M).group(1)
    manifest = extract(Path(archive), source.mek, tmp_path / "x").manifest
    head = run(source.env, "from pamportal.audit.selectors import audit_head\nresult = list(audit_head())")
    # Taken part way through the writes: the dump's head is behind the final one.
    assert written > 10 and manifest["audit_head"]["position"] < head[0]


RESIGN = """
import json
from pathlib import Path
from pamportal.backups.contents import archive_write
from pamportal.backups.services import manifest_sign
from pamportal.nodes import keystore
from tests.backups.helpers import extract
work = Path({work!r})
extracted = extract(Path({archive!r}), keystore.mek_load(), work / "unpacked")
manifest = {{k: v for k, v in extracted.manifest.items() if k not in ("signature", "public_key")}}
planted = work / "planted"
planted.write_text('{{"format": "pamportal-database", "version": 1}}')
manifest["files"].append({{"name": "node/database.json", "sha256": __import__("hashlib").sha256(planted.read_bytes()).hexdigest(),
                          "size": planted.stat().st_size, "mode": 384, "kind": "node-file"}})
manifest = manifest_sign(manifest)
files = {{**extracted.files, "node/database.json": planted}}
out = work / "planted.pambak"
with open(out, "wb") as handle:
    archive_write(handle, mek=keystore.mek_load(), cluster_id=extracted.header.cluster_id, created=extracted.header.created,
                  manifest=manifest, files=[(f["name"], files[f["name"]]) for f in manifest["files"]], mtime=0)
result = str(out)
"""


def test_a_validly_signed_archive_cannot_plant_other_files_on_the_node(source, fresh, tmp_path):
    """Whoever holds the MEK and the trail's signing key still cannot make a restore
    write anything but the node files a backup holds (here: a database.json that would
    point the node at another database)."""
    planted = run(source.env, RESIGN.format(work=str(tmp_path), archive=str(source.archive)))
    fresh.manage("check")
    before = state_of(fresh)
    result = fresh.manage("restore", planted, "--mek-file", str(_mek_file(tmp_path / "mek.txt", source.mek)),
                          check=False, timeout=300)
    assert result.returncode == 3 and "refused (bad_contents)" in result.stderr, result.stderr
    assert "node/database.json" in result.stderr
    assert state_of(fresh) == before


KILLED = """
import time
from pathlib import Path
from pamportal.backups import services

def stalls(out, **kwargs):
    out.write(b"PAMBAK\\r\\n" + b"x" * 1000)
    out.flush()
    Path({marker!r}).touch()
    time.sleep(120)

services.archive_write = stalls
services.backup_run()
"""


def test_a_killed_backup_leaves_no_archive_and_the_next_one_marks_it_failed(source, tmp_path):
    directory = source.archive.parent
    archives = sorted(p.name for p in directory.glob("*.pambak"))
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, str(REPO / "manage.py"), "shell", "-c", KILLED.format(marker=str(marker))],
                            cwd=REPO, env=source.env.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the backup never reached its write"
            time.sleep(0.05)
    finally:
        source.env.kill(proc)  # SIGKILL, as a worker dies
    assert sorted(p.name for p in directory.glob("*.pambak")) == archives
    left = sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name != ".lock")
    assert any(name.startswith(".staging-") for name in left)
    assert any(name.startswith(".pamportal-backup-") and name.endswith(".tmp") for name in left), left
    running = run(source.env, "from pamportal.backups.models import Backup\n"
                              "result = list(Backup.objects.filter(state='running').values_list('pk', flat=True))")
    assert len(running) == 1

    out = source.env.manage("backup", timeout=300)
    assert "proof: passed" in out.stdout and "was interrupted" in out.stderr
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == [".lock"]
    after = run(source.env, f"""
import json
from pamportal.audit.models import AuditEvent
from pamportal.backups.models import Backup
b = Backup.objects.get(pk={running[0]})
e = AuditEvent.objects.filter(action="backup.failed", target="backup:{running[0]}").get()
result = {{"state": b.state, "reason": b.failure_reason, "event": json.loads(e.details)["reason"]}}
""")
    assert after["state"] == "failed" and after["reason"].startswith("Interrupted") and after["event"] == after["reason"]


def test_one_backup_at_a_time_on_a_node(source):
    import fcntl

    directory = source.archive.parent
    with open(directory / ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        result = source.env.manage("backup", check=False, timeout=300)
    assert result.returncode == 1 and "Another backup is running on this node" in result.stderr
