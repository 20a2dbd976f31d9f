"""Query counts of the main pages, pinned on a finalised node with a large audit table,
so no page goes N+1 and no query grows with the audit trail; and a page view costs no
session write while the session's expiry was restarted less than a minute ago."""

from __future__ import annotations

import re

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
from pamportal.cluster import connections
from pamportal.cluster import selectors as cluster_selectors
from pamportal.setup.wizard import setup_finalise
from tests.cluster.conftest import FakeEtcd
from tests.setup.helpers import through_mek

AUDIT_EVENTS = 2_000

# The most queries each page may make for a signed-in administrator (session, user,
# TOTP device, the navigation badge, the licence banner and the removal banner included).
PAGES = {
    "nodes:dashboard": 10,
    "cluster:overview": 11,
    "audit:list": 9,
    "jobs:list": 8,
    "preflight:list": 8,
    "licensing:detail": 7,
}


@pytest.fixture
def finalised(db, data_dir, make_user, monkeypatch):
    fake = FakeEtcd()
    monkeypatch.setattr(connections, "etcd_client", lambda **kwargs: fake)
    cluster_selectors.etcd_status_forget()
    admin = make_user("qc-admin", Role.ADMINISTRATOR)
    through_mek(admin)
    setup_finalise(user=admin)
    with transaction.atomic():
        for i in range(AUDIT_EVENTS):
            audit_record(action=AuditAction.LOGIN_SUCCEEDED, target=f"user:u{i % 50}", details={"i": i},
                         actor_name=f"u{i % 50}")
    yield admin
    cluster_selectors.etcd_status_forget()


def _audit_queries_unbounded(queries) -> list[str]:
    """Queries over the audit table that are neither limited nor keyed by position."""
    return [
        q["sql"] for q in queries
        if '"audit_auditevent"' in q["sql"] and not re.search(r"LIMIT|\"position\" = |\"position\" IN", q["sql"])
    ]


@pytest.mark.parametrize("name", PAGES)
def test_main_page_query_count_is_pinned(name, finalised, login_client, django_assert_max_num_queries):
    client = login_client(finalised)
    assert client.get(reverse(name)).status_code == 200  # warm: the session write of the login
    with django_assert_max_num_queries(PAGES[name]) as captured:
        response = client.get(reverse(name))
    assert response.status_code == 200
    assert _audit_queries_unbounded(captured.captured_queries) == []
    assert not [q for q in captured.captured_queries if "COUNT(*)" in q["sql"] and "audit_auditevent" in q["sql"]]


def test_audit_page_counts_events_from_the_chain_head(finalised, login_client):
    client = login_client(finalised)
    page = client.get(reverse("audit:list")).context["page"]
    assert page.paginator.count >= AUDIT_EVENTS
    assert page.paginator.num_pages == -(-page.paginator.count // 50)
    # Filtered, the pager counts what the filter matches.
    filtered = client.get(reverse("audit:list"), {"actor": "u7"}).context["page"]
    assert filtered.paginator.count == AUDIT_EVENTS // 50


def test_cluster_page_reads_etcd_once_for_many_views(finalised, login_client):
    client = login_client(finalised)
    fake = connections.etcd_client()
    before = fake.count("member_list")
    for _ in range(5):
        assert client.get(reverse("cluster:overview")).status_code == 200
    assert fake.count("member_list") - before <= 1


def test_a_page_view_writes_no_session_while_its_expiry_is_fresh(finalised, login_client, settings):
    client = login_client(finalised)
    client.get(reverse("nodes:dashboard"))
    with CaptureQueriesContext(connection) as captured:
        client.get(reverse("nodes:dashboard"))
    writes = [q["sql"] for q in captured.captured_queries if "django_session" in q["sql"]
              and q["sql"].lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))]
    assert writes == []
    # Once the refresh window has passed, the next request restarts the expiry.
    settings.SESSION_REFRESH_SECONDS = 0
    with CaptureQueriesContext(connection) as captured:
        client.get(reverse("nodes:dashboard"))
    assert any(q["sql"].lstrip().upper().startswith("UPDATE") and "django_session" in q["sql"]
               for q in captured.captured_queries)



def test_every_page_reads_the_current_licence_as_the_orm_reads_it(finalised):
    from django.utils import timezone

    from pamportal.licensing.models import Licence
    from pamportal.licensing.selectors import licence_current

    def fields(licence):
        return licence and {f.attname: f.value_from_object(licence) for f in Licence._meta.concrete_fields}

    current = licence_current()
    assert current is not None and current.installed_by_name
    assert fields(current) == fields(Licence.objects.filter(replaced_at__isnull=True).first())
    assert isinstance(bytes(current.raw), bytes) and current.installed_at.tzinfo is not None
    Licence.objects.update(replaced_at=timezone.now())
    assert licence_current() is None
