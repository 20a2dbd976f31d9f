"""A finalised source node of its own (a data dir and a database: PostgreSQL when
``DATABASE_URL`` is set, else SQLite) with users, a licence and a few hundred audit
events, backed up once with ``manage.py backup``; and fresh nodes to restore onto.
Real processes, so the test database is never dumped or truncated."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster import USERS, run
from tests.support.node import NodeEnv, using_postgres

EVENTS = 300
# Small chunks, so that even a small archive has first, middle and last chunks.
CHUNK_BYTES = "16384"

SEED = USERS + f"""
from django.db import transaction
from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
from pamportal.setup import wizard
from tests.setup.helpers import through_mek
admin = user('admin', Role.ADMINISTRATOR)
user('olga', Role.OPERATOR)
user('vera', Role.VIEWER)
through_mek(admin)
wizard.setup_finalise(user=admin)
with transaction.atomic():
    for i in range({EVENTS}):
        audit_record(action=AuditAction.LOGIN_SUCCEEDED, target=f"user:u{{i % 7}}", details={{"i": i}},
                     actor_name=f"u{{i % 7}}")
result = True
"""

COUNTS = """
from django.contrib.auth import get_user_model
from pamportal.licensing.models import Licence
from pamportal.accounts.models import TOTPDevice
from pamportal.audit.selectors import audit_head
from pamportal.nodes.models import Certificate
result = {
    "users": sorted(get_user_model().objects.values_list("username", flat=True)),
    "licences": list(Licence.objects.values_list("licence_id", flat=True)),
    "totp": TOTPDevice.objects.count(),
    "certificates": Certificate.objects.count(),
    "head": list(audit_head()),
}
"""


@dataclass
class Taken:
    env: NodeEnv
    archive: Path
    sha256: str
    stdout: str
    mek: bytes
    counts: dict


def backup_of(env: NodeEnv) -> tuple[Path, str, str]:
    out = env.manage("backup", timeout=300).stdout
    archive = Path(re.search(r"^archive: (.+)$", out, re.M).group(1))
    sha256 = re.search(r"^sha256: ([0-9a-f]{64})$", out, re.M).group(1)
    return archive, sha256, out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    reason = pg_tools_match_server()
    if reason:
        pytest.skip(reason)
    env = NodeEnv(tmp_path_factory.mktemp("source"), PAM_BACKUP_CHUNK_BYTES=CHUNK_BYTES)
    try:
        env.manage("migrate", "--noinput", timeout=300)
        run(env, SEED)
        counts = run(env, COUNTS)
        archive, sha256, out = backup_of(env)
        yield Taken(env=env, archive=archive, sha256=sha256, stdout=out, mek=(env.data_dir / "mek.key").read_bytes(),
                    counts=counts)
    finally:
        env.stop()


@pytest.fixture
def fresh(tmp_path):
    """A node that was never set up: an empty data dir and an empty database."""
    env = NodeEnv(tmp_path / "fresh")
    try:
        yield env
    finally:
        env.stop()


def state_of(env: NodeEnv) -> dict:
    """What a refused restore must leave as it was: every file of the data dir (logs
    aside) with its content, and the database's tables."""
    files = {}
    for path in sorted(env.data_dir.rglob("*")):
        relative = path.relative_to(env.data_dir)
        if path.is_file() and relative.parts[0] != "logs":
            files[str(relative)] = path.read_bytes()
    if using_postgres():
        import psycopg

        with psycopg.connect(env.env["DATABASE_URL"]) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    else:
        tables = []
    return {"files": files, "tables": sorted(tables)}


def pg_tools_match_server() -> str:
    """Why the PostgreSQL round trip cannot run here ("" when it can)."""
    if not using_postgres():
        return ""
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        return "pg_dump/pg_restore are not on PATH (Debian's postgresql-client)"
    import os
    from urllib.parse import urlparse, urlunparse

    import psycopg

    tool = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True).stdout
    tool_major = int(re.search(r"(\d+)\.", tool).group(1))
    server = urlunparse(urlparse(os.environ["DATABASE_URL"])._replace(path="/postgres"))
    with psycopg.connect(server) as conn:
        server_major = conn.info.server_version // 10000
    if tool_major < server_major:
        return f"pg_dump {tool_major} is older than the server ({server_major})"
    return ""
