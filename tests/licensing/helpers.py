"""Helpers for the licensing tests: mint a licence, post it, read the audit trail."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from pamportal.audit.actions import AuditAction
from pamportal.crypto import licence as fmt
from tests.support.audit import events


def minted(*, customer="ACME Ltd", edition="enterprise", max_nodes=5, features=("audit-export", "sso"),
           starts: datetime | None = None, days: float = 365, licence_id: str | None = None) -> bytes:
    starts = starts or datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    return fmt.mint(
        customer=customer,
        edition=edition,
        max_nodes=max_nodes,
        features=features,
        not_before=starts,
        not_after=starts + timedelta(days=days),
        licence_id=licence_id,
    )


def upload(client, data: bytes, name: str = "licence.json"):
    return client.post(
        reverse("licensing:upload"),
        {"licence_file": SimpleUploadedFile(name, data, content_type="application/json")},
    )


def refusals():
    return events(AuditAction.LICENCE_REFUSED)
