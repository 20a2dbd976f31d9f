"""What the dashboard knows about this node: its latest facts and any collection under way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pamportal.jobs.choices import ACTIVE, Status
from pamportal.jobs.models import Job

from .facts import KIND as FACTS_KIND


@dataclass(frozen=True)
class NodeFacts:
    job: Job
    facts: dict[str, Any]
    collected_at: datetime | None


def node_facts_latest() -> NodeFacts | None:
    """The merged step results of the newest succeeded "node.facts" job, or None."""
    job = Job.objects.filter(kind=FACTS_KIND, status=Status.SUCCEEDED).order_by("-finished_at", "-id").first()
    if job is None:
        return None
    facts: dict[str, Any] = {}
    for result in job.steps.order_by("index").values_list("result", flat=True):
        facts.update(result or {})
    return NodeFacts(job=job, facts=facts, collected_at=job.finished_at)


def node_facts_running() -> Job | None:
    """The newest facts job still pending or running, or None."""
    return Job.objects.filter(kind=FACTS_KIND, status__in=ACTIVE).order_by("-created_at", "-id").first()


def node_facts_last_failure(after: NodeFacts | None) -> Job | None:
    """The newest facts job that ended without success after the facts shown, if any."""
    jobs = Job.objects.filter(kind=FACTS_KIND, status__in=[Status.FAILED, Status.CANCELLED])
    if after is not None:
        jobs = jobs.filter(created_at__gt=after.job.created_at)
    return jobs.order_by("-created_at", "-id").first()


# --- this node's identity, setup progress and certificates ------------------------------
def node_current():
    """This node's row, or an unsaved one with the defaults when setup has not begun."""
    from .models import Node

    node = Node.objects.filter(pk=Node.SINGLETON_PK).first()
    return node if node is not None else Node(pk=Node.SINGLETON_PK, address="", ntp_servers=[])


def node_address(node=None) -> str:
    """The address the operator set in the wizard, else the one the node started with."""
    from django.conf import settings

    node = node if node is not None else node_current()
    return node.address or settings.PAM_NODE_ADDRESS


def node_is_finalised() -> bool:
    from .models import Node

    return Node.objects.filter(pk=Node.SINGLETON_PK, finalised_at__isnull=False).exists()


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
    from pamportal.crypto.ca import certificate_info

    info = certificate_info(cert_pem)
    return CertificateView(
        title=title, subject=info.subject, issuer=info.issuer, names=info.names, not_before=info.not_before,
        not_after=info.not_after, days_left=info.days_left(), sha256=info.sha256, source=source,
    )


def certificates_current() -> list[CertificateView]:
    """The cluster CA and this node's certificate once setup is finalised; before that,
    the self-signed certificate the console was started with (if readable)."""
    from django.conf import settings

    from .models import Certificate, CertificateKind

    rows = {c.kind: c for c in Certificate.objects.filter(replaced_at__isnull=True)}
    views = []
    if CertificateKind.CLUSTER_CA in rows:
        views.append(_view("Cluster CA", rows[CertificateKind.CLUSTER_CA].cert_pem.encode(), "created at finalise"))
    if CertificateKind.NODE_TLS in rows:
        views.append(_view("This node (HTTPS)", rows[CertificateKind.NODE_TLS].cert_pem.encode(), "signed by the cluster CA"))
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
