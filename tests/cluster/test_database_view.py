"""The cluster page's database part: each member's Patroni role, state, timeline and lag
beside etcd's view, read through a cached REST call (a fake PatroniClient here; one real
Patroni member on 127.0.0.91 at the end), and what a node not on Patroni says instead."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import pytest
from django.urls import reverse

from pamportal.cluster import connections, database_view
from pamportal.cluster import selectors as cluster_selectors
from pamportal.cluster.etcd import Member
from pamportal.cluster.models import ClusterMember, MemberRole, MemberState
from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file
from pamportal.replication.rest import ClusterMember as PatroniMember
from pamportal.replication.rest import ClusterView, PatroniTLSError, PatroniUnavailable
from tests.cluster.conftest import LEADER

FOLLOWERS = {"127.0.0.92": "node-127-0-0-92", "127.0.0.93": "node-127-0-0-93"}


@dataclass
class FakePatroni:
    """``PatroniClient.cluster()`` over a fixed answer, or raising ``error``."""

    view: ClusterView = field(default_factory=lambda: ClusterView(members=()))
    error: Exception | None = None
    calls: int = 0

    def cluster(self) -> ClusterView:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.view


def member(name, role, state, *, timeline=4, lag=None, host="127.0.0.91") -> PatroniMember:
    return PatroniMember(name=name, role=role, state=state, api_url=f"https://{host}:8008/patroni", host=host,
                         port=5432, timeline=timeline, lag=lag)


@pytest.fixture
def patroni(monkeypatch):
    fake = FakePatroni()
    monkeypatch.setattr(database_view, "patroni_client", lambda *, timeout: fake)
    database_view.patroni_status_forget()
    yield fake
    database_view.patroni_status_forget()


@pytest.fixture
def on_patroni(leader, data_dir, patroni):
    """The leader's database is its Patroni member (database.json), named as its etcd member."""
    write_database_file(data_dir, DatabaseFile(hosts=(DatabaseHost(host="127.0.0.91", port=5432),), member=LEADER))
    return patroni


@pytest.fixture
def followers(leader, fake_etcd):
    """Two active followers, in etcd under the names their Patroni members have."""
    for i, (address, name) in enumerate(FOLLOWERS.items()):
        ClusterMember.objects.create(address=address, role=MemberRole.FOLLOWER, state=MemberState.ACTIVE,
                                     etcd_member_id=str(4097 + i))
        fake_etcd.members[4097 + i] = Member(id=4097 + i, name=name,
                                             peer_urls=(connections.member_peer_url(address),),
                                             client_urls=(connections.member_client_url(address),))


def _page(client, name="cluster:overview") -> str:
    response = client.get(reverse(name))
    assert response.status_code == 200
    return response.content.decode()


def _row(page: str, address: str) -> str:
    row = next(r for r in re.findall(r"<tr>.*?</tr>", page, re.S) if f"<td>{address}</td>" in r)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip()


def test_a_node_not_on_patroni_says_where_its_data_is_and_calls_nobody(leader, patroni, as_role):
    client = as_role("viewer")
    page = _page(client)
    from django.conf import settings

    where = ("SQLite (the embedded default)" if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
             else "the configured database (DATABASE_URL)")
    assert f"This node&#x27;s data is in {where}; not replicated" in page
    assert "manage.py database_to_patroni" in page
    assert "Database role" not in page
    assert patroni.calls == 0
    assert 'id="database-standing"' not in _page(client, "nodes:dashboard")


def test_roles_states_timelines_and_lag_per_member_beside_etcd(on_patroni, followers, as_role):
    on_patroni.view = ClusterView(members=(
        member(LEADER, "leader", "running", timeline=7),
        member("node-127-0-0-92", "sync_standby", "streaming", timeline=7, lag=0, host="127.0.0.92"),
        member("node-127-0-0-93", "replica", "starting", timeline=6, lag=None, host="127.0.0.93"),
    ))
    page = _page(as_role("viewer"))
    assert "<th>Database role</th><th>Database state</th><th>Timeline</th><th>Lag</th>" in page
    assert re.search(r"led by <strong id=\"database-leader\">node1\.example\.com</strong> \(127\.0\.0\.91\), "
                     r"timeline 7\.", page)
    # the leader's row: etcd's view (voting) and Patroni's (leader, running, timeline 7, no lag)
    assert _row(page, LEADER).startswith("node1.example.com Leader Active")
    assert "voting" in _row(page, LEADER) and "leader running 7 –" in _row(page, LEADER)
    assert "sync standby streaming 7 0 bytes" in _row(page, "127.0.0.92")
    assert "replica starting 6 unknown" in _row(page, "127.0.0.93")  # Patroni did not say
    assert 'id="database-unmatched"' not in page


def test_a_lag_in_bytes_and_members_patroni_lists_that_the_page_does_not(on_patroni, as_role):
    on_patroni.view = ClusterView(members=(
        member(LEADER, "leader", "running"),
        member("node-127-0-0-94", "replica", "streaming", lag=16_777_216, host="127.0.0.94"),
    ))
    page = _page(as_role("viewer"))
    unmatched = page.split('id="database-unmatched"', 1)[1].split("</table>", 1)[0]
    assert "node-127-0-0-94" in unmatched and "16777216 bytes" in unmatched and "replica" in unmatched


def test_no_leader_and_a_paused_cluster_are_said_plainly(on_patroni, as_role):
    on_patroni.view = ClusterView(members=(member(LEADER, "replica", "stopped", lag=None),), paused=True)
    page = _page(as_role("viewer"))
    assert "no member leads the database right now" in page
    assert "Patroni is paused (maintenance mode): no automatic failover." in page
    assert "replica stopped 4 unknown" in _row(page, LEADER)


@pytest.mark.parametrize("error, reason", [
    (PatroniUnavailable("https://127.0.0.91:8008/cluster", "URLError: [Errno 111] Connection refused"),
     "Connection refused"),
    (PatroniTLSError("https://127.0.0.91:8008/cluster", "SSLError: certificate verify failed"),
     "certificate verify failed"),
])
def test_patroni_unreachable_shows_the_reason_never_a_traceback(on_patroni, as_role, error, reason):
    on_patroni.error = error
    client = as_role("viewer")
    page = _page(client)
    line = re.search(r'<p class="error-text" id="database-standing"[^>]*>(.*?)</p>', page, re.S).group(1)
    assert line.startswith("Database: Patroni cannot be reached: ") and reason in line
    assert "https://127.0.0.91:8008/cluster" in line
    assert "Traceback" not in page and "Error(" not in page
    # the roles are not known, and the table says so rather than guessing
    assert "unknown (Patroni not reached)" in _row(page, LEADER)
    assert reason in _page(client, "nodes:dashboard")


def test_the_reason_when_the_node_has_no_member_configuration(leader, data_dir, as_role):
    """The real client factory: a node whose database.json exists but whose etcd member
    configuration is gone says why, with no REST call attempted."""
    database_view.patroni_status_forget()
    write_database_file(data_dir, DatabaseFile(hosts=(DatabaseHost(host="127.0.0.91", port=5432),), member=LEADER))
    (data_dir / "etcd" / "member.json").unlink(missing_ok=True)
    try:
        page = _page(as_role("viewer"))
    finally:
        database_view.patroni_status_forget()
    assert "Patroni cannot be reached: this node has no etcd member" in page


def test_one_rest_call_for_many_page_views_and_none_while_fresh(on_patroni, as_role, monkeypatch):
    on_patroni.view = ClusterView(members=(member(LEADER, "leader", "running"),))
    client = as_role("viewer")
    for _ in range(10):
        _page(client)
        _page(client, "nodes:dashboard")
    assert on_patroni.calls == 1
    # failures are remembered as long: an unreachable member slows one view per window
    database_view.patroni_status_forget()
    on_patroni.error = PatroniUnavailable("https://127.0.0.91:8008/cluster", "timed out")
    for _ in range(5):
        _page(client)
    assert on_patroni.calls == 2
    # once the window has passed, the next view asks again
    monkeypatch.setattr(database_view, "PATRONI_STATUS_SECONDS", 0.0)
    status = database_view.patroni_status(max_age=0.0)
    assert on_patroni.calls == 3 and not status.ok


def test_names_from_patroni_are_escaped(on_patroni, as_role):
    evil = '<script>alert("x")</script>'
    on_patroni.view = ClusterView(members=(
        member(LEADER, "leader", '<img src=x onerror="y">'),
        member(evil, "<b>replica</b>", "streaming", host='"><svg onload=1>'),
    ))
    page = _page(as_role("viewer"))
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>replica" not in page
    assert "<svg onload" not in page
    assert html.escape(evil) in page or "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_the_dashboard_says_who_leads_the_database(on_patroni, as_role):
    on_patroni.view = ClusterView(members=(
        member("node-127-0-0-92", "leader", "running", host="127.0.0.92"),
        member(LEADER, "sync_standby", "streaming", lag=0),
    ))
    client = as_role("viewer")
    page = _page(client, "nodes:dashboard")
    line = re.search(r'<p id="database-standing">(.*?)</p>', page, re.S).group(1)
    assert re.sub(r"<[^>]+>", "", line) == "The cluster's database is led by node-127-0-0-92 (127.0.0.92)."
    on_patroni.view = ClusterView(members=(member(LEADER, "leader", "running"),))
    database_view.patroni_status_forget()
    page = _page(client, "nodes:dashboard")
    assert "is led by <strong>node1.example.com</strong> (127.0.0.91), this node." in page


def test_the_selector_matches_by_etcd_name(on_patroni, followers):
    on_patroni.view = ClusterView(members=(
        member(LEADER, "leader", "running"),
        member("node-127-0-0-93", "replica", "streaming", lag=42, host="127.0.0.93"),
    ))
    overview = cluster_selectors.cluster_overview()
    by_address = {v.member.address: v.database for v in overview.members}
    assert by_address[LEADER].is_leader
    assert by_address["127.0.0.92"] is None  # not (yet) a PostgreSQL member
    assert by_address["127.0.0.93"].lag_label == "42 bytes"
    assert overview.database_unmatched == []


def test_a_followers_pages_say_who_leads_the_database(on_patroni, as_role):
    """A replica's console tells the truth about who leads, though the cluster is managed there."""
    from pamportal.nodes.models import Node, NodeRole

    Node.objects.filter(pk=Node.SINGLETON_PK).update(role=NodeRole.FOLLOWER)
    on_patroni.view = ClusterView(members=(
        member("node-127-0-0-92", "leader", "running", timeline=3, host="127.0.0.92"),
        member(LEADER, "sync_standby", "streaming", timeline=3, lag=0),
    ))
    client = as_role("viewer")
    overview = _page(client)
    assert "manage the cluster there" in overview
    assert re.search(r'led by <strong id="database-leader">node-127-0-0-92</strong> \(127\.0\.0\.92\), timeline 3\.',
                     overview)
    dashboard = _page(client, "nodes:dashboard")
    assert "The cluster&#x27;s database is led by" in dashboard or "The cluster's database is led by" in dashboard
    assert on_patroni.calls == 1


# --- against a real Patroni member -------------------------------------------------------------
REAL_ADDRESS = "127.0.0.91"
REAL_MEMBER = "node-127-0-0-91"  # named as the node's etcd member would be (local_etcd.member_name)


@pytest.mark.processes
@pytest.mark.cluster
def test_the_real_page_lists_the_real_member_as_leader(leader, data_dir, fake_etcd, as_role, settings, tmp_path):
    """One etcd voter and one Patroni member on 127.0.0.91 (tests/replication's Lab); the
    node's files are pointed at the lab's (its CA, certificate, etcd member, Patroni
    port), so the page goes through the real client factory, ``local.node_member().api()``,
    over TLS with the node's client certificate."""
    import shutil

    from pamportal.cluster.local_etcd import local_member_configure
    from tests.replication.support import Lab, missing_tools

    if missing_tools() is not None:
        pytest.skip(missing_tools())
    lab = Lab(tmp_path / "lab", addresses={REAL_MEMBER: REAL_ADDRESS})
    database_view.patroni_status_forget()
    try:
        lab.etcd_start()
        lab.member_start(REAL_MEMBER)
        lab.wait_leader(REAL_MEMBER, REAL_MEMBER, timeout=120)

        tls = tmp_path / "node-tls"
        tls.mkdir()
        node = lab.pki.nodes[REAL_MEMBER]
        shutil.copy(node.cert_file, tls / "node.crt")
        shutil.copy(node.key_file, tls / "node.key")
        shutil.copy(lab.pki.ca_file, tls / "cluster-ca.crt")  # nodes.services.ca_cert_path
        settings.PAM_TLS_CERT, settings.PAM_TLS_KEY = tls / "node.crt", tls / "node.key"
        settings.PAM_PATRONI_PORT = lab.pg_ports[REAL_MEMBER][1]
        local_member_configure(address=REAL_ADDRESS, name=REAL_MEMBER, cluster_token="dbview-test")
        host = DatabaseHost(host=REAL_ADDRESS, port=lab.pg_ports[REAL_MEMBER][0])
        write_database_file(data_dir, DatabaseFile(hosts=(host,), member=REAL_MEMBER))
        # etcd (the in-memory one) lists the leader under the same name
        fake_etcd.members[0xA1] = Member(id=0xA1, name=REAL_MEMBER, peer_urls=fake_etcd.members[0xA1].peer_urls,
                                         client_urls=fake_etcd.members[0xA1].client_urls)

        client = as_role("viewer")
        page = _page(client)
        assert re.search(rf'led by <strong id="database-leader">{REAL_MEMBER}</strong> \({re.escape(REAL_ADDRESS)}\), '
                         r"timeline 1\.", page), re.search(r'<section id="database-view">.*?</section>', page, re.S).group(0)
        assert "leader running 1 –" in _row(page, LEADER)
        assert "is led by <strong>node-127-0-0-91</strong> (127.0.0.91), this node." in _page(client, "nodes:dashboard")

        # the member stopped: within the cache window nothing changes, then the reason
        lab.member_stop(REAL_MEMBER)
        assert "leader running 1 –" in _row(_page(client), LEADER)
        database_view.patroni_status_forget()
        page = _page(client)
        line = re.search(r'<p class="error-text" id="database-standing"[^>]*>(.*?)</p>', page, re.S).group(1)
        assert "Patroni cannot be reached:" in line and f"https://{REAL_ADDRESS}:" in line, line
    finally:
        database_view.patroni_status_forget()
        lab.close()
