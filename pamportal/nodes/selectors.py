"""What the dashboard knows about this node: its latest facts and any collection under way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings

from pamportal.crypto.ca import certificate_info
from pamportal.jobs.choices import ACTIVE, Status
from pamportal.jobs.models import Job
from pamportal.nodes.identity import node_filter, shared_database_address

from .facts import KIND as FACTS_KIND
from .models import Certificate, CertificateKind, Node


@dataclass(frozen=True)
class NodeFacts:
    job: Job
    facts: dict[str, Any]
    collected_at: datetime | None


def _facts_jobs():
    """Facts jobs: on the cluster's shared database, this node's alone (their params
    carry its address)."""
    address = shared_database_address()
    return Job.objects.filter(params__node_address=address) if address else Job.objects.all()


def node_facts_latest() -> NodeFacts | None:
    """The merged step results of the newest succeeded "node.facts" job, or None."""
    job = _facts_jobs().filter(kind=FACTS_KIND, status=Status.SUCCEEDED).order_by("-finished_at", "-id").first()
    return _facts_of(job) if job is not None else None


def _facts_of(job: Job) -> NodeFacts:
    facts: dict[str, Any] = {}
    for result in job.steps.order_by("index").values_list("result", flat=True):
        facts.update(result or {})
    return NodeFacts(job=job, facts=facts, collected_at=job.finished_at)


def node_facts_running() -> Job | None:
    """The newest facts job still pending or running, or None."""
    return _facts_jobs().filter(kind=FACTS_KIND, status__in=ACTIVE).order_by("-created_at", "-id").first()


def node_facts_last_failure(after: NodeFacts | None) -> Job | None:
    """The newest facts job that ended without success after the facts shown, if any."""
    jobs = _facts_jobs().filter(kind=FACTS_KIND, status__in=[Status.FAILED, Status.CANCELLED])
    if after is not None:
        jobs = jobs.filter(created_at__gt=after.job.created_at)
    return jobs.order_by("-created_at", "-id").first()


@dataclass(frozen=True)
class FactsOverview:
    latest: NodeFacts | None
    running: Job | None
    failure: Job | None


_FACTS_WINDOW = 20


def node_facts_overview() -> FactsOverview:
    """``node_facts_latest``, ``node_facts_running`` and ``node_facts_last_failure`` as
    the dashboard shows them, from one query over the newest facts jobs (and the steps
    of the one shown); the three queries only when that window holds no success."""
    recent = list(_facts_jobs().filter(kind=FACTS_KIND).order_by("-created_at", "-id")[:_FACTS_WINDOW])
    succeeded = [job for job in recent if job.status == Status.SUCCEEDED]
    if not succeeded and len(recent) == _FACTS_WINDOW:
        latest = node_facts_latest()
        return FactsOverview(latest, node_facts_running(), node_facts_last_failure(latest))
    newest = max(succeeded, key=lambda job: (job.finished_at is not None, job.finished_at, job.id), default=None)
    latest = _facts_of(newest) if newest is not None else None
    running = next((job for job in recent if job.status in ACTIVE), None)
    failure = next((job for job in recent if job.status in (Status.FAILED, Status.CANCELLED)
                    and (newest is None or job.created_at > newest.created_at)), None)
    return FactsOverview(latest, running, failure)


# --- this node's identity, setup progress and certificates ------------------------------
def node_current() -> Node:
    """This node's row, or an unsaved one with the defaults when setup has not begun."""
    lookup = node_filter()
    node = Node.objects.filter(**lookup).first()
    return node if node is not None else Node(pk=lookup.get("pk"), address=lookup.get("address", ""), ntp_servers=[])


def node_address(node=None) -> str:
    """The address the operator set in the wizard, else the one the node started with."""
    node = node if node is not None else node_current()
    return node.address or settings.PAM_NODE_ADDRESS


def node_is_finalised() -> bool:
    return Node.objects.filter(**node_filter(), finalised_at__isnull=False).exists()


# --- how far this node's setup has come ---------------------------------------------------
NODE_STEPS = ("node", "preflight", "licence", "mek", "finalise")


def node_setup_due(node: Node | None = None) -> str | None:
    """The wizard step due after the administrator exists (None: setup is finalised).
    Read from the database, so a refresh or a later visit resumes there."""
    node = node if node is not None else node_current()
    if node.finalised_at is not None:
        return None
    if not node.address or not node.ntp_servers:
        return "node"
    if node.preflight_passed_at is None:
        return "preflight"
    if node.licence_done_at is None:
        return "licence"
    if node.mek_confirmed_at is None:
        return "mek"
    return "finalise"


@dataclass(frozen=True)
class CertificateView:
    """A certificate as the pages show it."""

    title: str
    subject: str
    issuer: str
    names: list[str]
    not_before: datetime
    not_after: datetime
    days_left: int
    sha256: str
    source: str  # "cluster CA", "self-signed first-boot certificate", ...

    @property
    def expires_soon(self) -> bool:
        return self.days_left < 30


def _view(title: str, cert_pem: bytes, source: str) -> CertificateView:
    info = certificate_info(cert_pem)
    return CertificateView(
        title=title, subject=info.subject, issuer=info.issuer, names=info.names, not_before=info.not_before,
        not_after=info.not_after, days_left=info.days_left(), sha256=info.sha256, source=source,
    )


def certificate_is_own(row: Certificate | None) -> bool:
    """Whether a node certificate row is this node's: always on a database of the
    node's own; on the cluster's shared database, only the one issued to this node's
    address (the others are the other members')."""
    if row is None:
        return False
    address = shared_database_address()
    return not address or address in (row.names or [])


def certificates_current() -> list[CertificateView]:
    """The cluster CA and this node's certificate once setup is finalised; before that,
    the self-signed certificate the console was started with (if readable). A member
    of a replicated cluster whose certificate the shared database does not hold shows
    the certificate file its console serves."""
    rows = {c.kind: c for c in Certificate.objects.filter(replaced_at__isnull=True)}
    views = []
    if CertificateKind.CLUSTER_CA in rows:
        views.append(_view("Cluster CA", rows[CertificateKind.CLUSTER_CA].cert_pem.encode(), "created at finalise"))
    if certificate_is_own(rows.get(CertificateKind.NODE_TLS)):
        views.append(_view("This node (HTTPS)", rows[CertificateKind.NODE_TLS].cert_pem.encode(), "signed by the cluster CA"))
    elif views:
        try:
            views.append(_view("This node (HTTPS)", settings.PAM_TLS_CERT.read_bytes(),
                               "signed by the cluster CA (the file this node's console serves)"))
        except (OSError, ValueError):
            pass
    if not views:
        try:
            pem = settings.PAM_TLS_CERT.read_bytes()
        except OSError:
            return []
        try:
            views.append(_view("This node (HTTPS)", pem, "self-signed, until setup is finalised"))
        except ValueError:
            return []
    return views
