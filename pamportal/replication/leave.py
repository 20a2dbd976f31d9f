"""A member removed from a replicated cluster leaves the cluster's database when its
cluster state is wiped (``cluster.removed.cluster_state_wipe``, typed confirmation).

Until the wipe the removed node keeps reading the cluster's database (its PostgreSQL
member is stopped as soon as its etcd member is: Patroni needs both): its pages say it
was removed, by which request and when, as the cluster recorded it. The wipe is then
recorded twice, so that neither trail has a gap:

1. in the cluster's chain (the caller's transaction): the removal wiped, the node's row
   gone from the cluster's database;
2. here, once that commits, in the node's own database from before it joined (or
   before its move to PostgreSQL): the SQLite file ``database.json`` names as kept
   (put back in place if the move renamed it; a new one, migrated, if there is none).
   The removal is copied into it and wiped there exactly as on a node that never
   shared a database (``cluster_state_wipe``: certificates kept as replaced rows, the
   node no longer finalised, the cluster files and the console's certificate
   replaced), with its own audit events in that file's chain;
   ``database.json`` is moved aside first (``database.json.left-<time>``, kept as
   evidence): ``serve`` sees it go, moves the console and the worker back onto SQLite
   and no longer runs the PostgreSQL member (stopped since the removal was learnt:
   it needs the etcd member's configuration); the member's directory goes too.

Should step 2 fail after the file moved, the node is on its own database as it was
before it joined, a member still in its own eyes: its periodic check finds itself
absent from etcd's member list, learns the removal again, and the wipe can be repeated.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from django.conf import settings
from django.core.management import call_command

from pamportal.accounts import totp_seal

from . import database, process
from .move import alias_add, alias_drop, default_is

logger = logging.getLogger(__name__)
ALIAS = "kept"  # the node's own SQLite database, beside the cluster's while the wipe runs
LEFT_PREFIX = "database.json.left-"


def kept_sqlite(data_dir: Path, current: database.DatabaseFile) -> Path:
    """The node's SQLite file, in the place settings read it from: the file the move
    renamed is put back when nothing is there."""
    target = data_dir / database.SQLITE_FILE
    kept = Path(current.sqlite_kept) if current.sqlite_kept else None
    if not target.exists() and kept is not None and kept != target and kept.exists():
        os.replace(kept, target)
    return target


def database_leave(*, removal: dict, username: str) -> Path | None:
    """After the wipe was recorded in the cluster's chain: wipe the node's own SQLite
    database as a removed node's, then move ``database.json`` aside. ``removal``: the
    removal's fields as the cluster recorded them. Returns where database.json went
    (None when the node had none)."""
    from pamportal.cluster.follower_models import NodeRemoval
    from pamportal.cluster.removed import cluster_state_wipe

    data_dir = Path(settings.PAM_DATA_DIR)
    current = database.read_database_file(data_dir)
    if current is None:
        return None
    sqlite = kept_sqlite(data_dir, current)
    fresh = not sqlite.exists()
    # First out of the cluster's database: from here this node's rows are its own
    # database's again (``nodes.identity``), and the wipe below is a single node's.
    left = data_dir / f"{LEFT_PREFIX}{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    os.replace(database.database_file_path(data_dir), left)
    # Its own database's TOTP devices are sealed with its own key, kept at the join.
    totp_seal.key_restore_own()
    alias_add(ALIAS, database.sqlite_settings(data_dir))
    try:
        if fresh:
            call_command("migrate", database=ALIAS, interactive=False, verbosity=0)
        with default_is(ALIAS):
            NodeRemoval.objects.filter(address=removal["address"], wiped_at__isnull=True).delete()
            NodeRemoval.objects.create(**removal)
            # The cluster's administrator who wiped (this database may not know them).
            who = SimpleNamespace(get_username=lambda: username)
            cluster_state_wipe(user=who, confirmation=removal["address"])
    finally:
        alias_drop(ALIAS)
    member_files_forget(current.member)
    logger.info("left the cluster's database: %s moved to %s; the console and the worker go back to %s",
                database.FILE_NAME, left.name, sqlite)
    return left


def member_files_forget(member: str) -> None:
    """The stopped member's directory (its PostgreSQL data, configuration, TLS copies);
    best effort, a failure is logged."""
    paths = process.member_paths(process.default_base(), member)
    if not paths.root.exists():
        return
    try:
        shutil.rmtree(paths.root)
    except OSError as exc:
        logger.warning("the removed member's directory %s could not be removed: %s", paths.root, exc)
