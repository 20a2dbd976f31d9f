"""Which rows of the database are this node's own.

A node on its own database (the embedded SQLite, or a ``DATABASE_URL`` of its own) has
one ``Node`` row, pk 1, and every row of node-local state (its join, its removal, its
certificate) is its own. A node of a replicated cluster shares the cluster's database
with every other member: there, a row is this node's when it carries this node's
address, and the address comes from the one file that made the database shared,
``<data dir>/database.json`` (``node_address``: written by the move to Patroni and by
the join's switch). Asking the database "who am I" would be circular; asking etcd's
member configuration would lose the answer once the node is removed.

Read per call with one ``stat`` (the answer is kept per version of the file), so a
process that switched databases (a join) follows without a restart.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from django.conf import settings

from pamportal.replication import database

logger = logging.getLogger(__name__)
SINGLETON_PK = 1

_lock = threading.Lock()
_seen: dict[str, tuple[tuple[int, ...], str]] = {}


def shared_database_address(data_dir: Path | str | None = None) -> str:
    """This node's address when its database is the cluster's (``database.json`` names
    it), else "". A file that turned unreadable keeps the last answer read from it."""
    path = database.database_file_path(data_dir or settings.PAM_DATA_DIR)
    key = str(path)
    try:
        signature = database._signature(path.stat())
    except FileNotFoundError:
        return ""
    except OSError:
        signature = None
    with _lock:
        seen = _seen.get(key)
        if seen is not None and seen[0] == signature:
            return seen[1]
    try:
        raw, signature = database._read(path)
        address = database.parse_database_file(raw, path).node_address
    except FileNotFoundError:
        return ""
    except database.DatabaseFileError as exc:
        if seen is not None:
            return seen[1]
        logger.warning("%s: this node's address cannot be read from it (%s)", path, exc.problem)
        return ""
    with _lock:
        _seen[key] = (signature, address)
    return address


def node_filter() -> dict:
    """Lookup arguments for this node's ``Node`` row."""
    address = shared_database_address()
    return {"address": address} if address else {"pk": SINGLETON_PK}


def own_rows(queryset, field: str):
    """``queryset`` narrowed to this node's rows by ``field`` (an address column) when
    the database is shared; unchanged on a database of the node's own."""
    address = shared_database_address()
    return queryset.filter(**{field: address}) if address else queryset
