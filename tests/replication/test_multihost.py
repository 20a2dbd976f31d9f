"""Django on the cluster's PostgreSQL through libpq multi-host, for real: two Patroni
members on 127.0.0.55-56, the DATABASES entry pamportal.replication.database builds
(replica listed first), and a switchover: the kept connection to the demoted primary
is dropped by Django's health check and the next "request" writes on the new one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper

from pamportal.replication import database
from pamportal.replication.database import DatabaseFile, DatabaseHost
from tests.replication.support import Lab, missing_tools, wait_until

pytestmark = [
    pytest.mark.processes,
    pytest.mark.cluster,
    pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or ""),
]
ADDRESSES = {"m1": "127.0.0.55", "m2": "127.0.0.56"}
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("multihost"), addresses=ADDRESSES)
    try:
        lab.etcd_start()
        lab.member_start("m1")
        lab.wait_leader("m1", "m1", timeout=90)
        wait_until(lambda: lab.connect("m1").execute("SELECT 1").fetchone(), 30, what="the application role on m1",
                   log=lambda: lab.log("m1"))
        lab.member_start("m2")
        lab.wait_sync_standby("m1", "m2", timeout=90)
        yield lab
    finally:
        lab.close()
        if FIGURES:
            print("\nmulti-host figures: " + ", ".join(f"{k} {v:.2f}s" for k, v in FIGURES.items()))


def django_connection(lab: Lab, alias: str) -> DatabaseWrapper:
    """A Django connection configured exactly as a moved node's ``default``."""
    hosts = tuple(DatabaseHost(host=ADDRESSES[n], port=lab.pg_ports[n][0]) for n in ("m2", "m1"))
    cert = lab.pki.nodes["m1"]
    entry = database.postgresql_settings(DatabaseFile(hosts=hosts, member="m1"), ca_file=lab.pki.ca_file,
                                         cert_file=cert.cert_file, key_file=cert.key_file)
    configured = connections.configure_settings({"default": entry})["default"]
    return DatabaseWrapper(configured, alias=alias)


def server(conn: DatabaseWrapper) -> str:
    with conn.cursor() as cursor:
        cursor.execute("SELECT host(inet_server_addr())")
        return cursor.fetchone()[0]


def request(conn: DatabaseWrapper, sql: str, params=()) -> str:
    """What Django does around a request: drop an unusable or obsolete connection
    (request_started/finished signals), run the statement, answer where it ran."""
    conn.close_if_unusable_or_obsolete()
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql + " RETURNING host(inet_server_addr())", params)
            return cursor.fetchone()[0]
    finally:
        conn.close_if_unusable_or_obsolete()


def test_multi_host_lands_on_the_primary_and_follows_a_switchover(pair, django_db_blocker):
    lab = pair

    def in_a_thread_of_its_own():
        # Django refuses a connection in a thread with a running event loop (the
        # browser tests' Playwright leaves one in the main thread), and a connection
        # belongs to the thread that made it: make it and use it in a plain thread.
        switch_and_follow(lab, django_connection(lab, "multihost"))

    # our own connection to the lab's members, not the test database
    with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(in_a_thread_of_its_own).result(timeout=120)


def switch_and_follow(lab: Lab, conn: DatabaseWrapper) -> None:
    try:
        # the replica is listed first: libpq skips it (target_session_attrs=read-write)
        assert server(conn) == ADDRESSES["m1"]
        assert conn.settings_dict["CONN_HEALTH_CHECKS"] is True and conn.settings_dict["CONN_MAX_AGE"] > 0
        with conn.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, note text NOT NULL)")
            cursor.execute("SHOW ssl")
            assert cursor.fetchone()[0] == "on"
        assert request(conn, "INSERT INTO notes (note) VALUES (%s)", ["before"]) == ADDRESSES["m1"]
        kept = conn.connection
        assert kept is not None  # CONN_MAX_AGE: the connection is kept between requests

        started = time.monotonic()
        answer = lab.api("m1").switchover(leader="m1", candidate="m2")
        assert 'switched over to "m2"' in answer, answer
        answered = time.monotonic()

        def write_after():
            try:
                return request(conn, "INSERT INTO notes (note) VALUES (%s)", ["after"])
            except Exception:  # noqa: BLE001 — a request that failed during the switch
                return None

        landed = wait_until(write_after, 30, interval=0.05, what="a write through Django after the switchover")
        FIGURES["switchover call to first Django write"] = time.monotonic() - started
        FIGURES["switchover answered to first Django write"] = time.monotonic() - answered
        assert landed == ADDRESSES["m2"]
        assert conn.connection is not kept  # the old primary's connection was dropped

        fresh = django_connection(lab, "multihost-fresh")
        try:
            assert server(fresh) == ADDRESSES["m2"]  # a new connection lands on the new primary
            with fresh.cursor() as cursor:
                cursor.execute("SELECT note FROM notes ORDER BY id")
                assert [r[0] for r in cursor.fetchall()][0] == "before"
        finally:
            fresh.close()
    finally:
        conn.close()
