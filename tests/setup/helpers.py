"""Walking the node's setup steps through the services, for tests that start later."""

from __future__ import annotations

import re

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from pamportal.crypto import mek
from pamportal.jobs.choices import Status
from pamportal.jobs.models import Job
from pamportal.licensing.services import licence_install
from pamportal.nodes import keys, keystore
from pamportal.preflight.checks import CheckStatus
from pamportal.preflight.models import CheckOutcome
from pamportal.setup import wizard
from tests.licensing.helpers import minted

ADDRESS = "node1.example.com"
NTP = ["ntp1.example.com", "127.0.0.1:12345"]


def finish_preflight(run, *, failing: dict[str, str] | None = None) -> None:
    """Record the run as a worker would have: every check passed except ``failing``
    (check id -> status). The checks themselves are tested in tests/preflight."""
    failing = failing or {}
    outcomes = CheckOutcome.objects.filter(run=run)
    outcomes.exclude(check_id__in=failing).update(status=CheckStatus.PASS, measured="ok")
    for check_id, status in failing.items():
        outcomes.filter(check_id=check_id).update(status=status, measured="bad", message=f"{check_id} failed")
    Job.objects.filter(pk=run.job_id).update(status=Status.SUCCEEDED)


def licence_file(**kwargs) -> SimpleUploadedFile:
    return SimpleUploadedFile("licence.json", minted(**kwargs), content_type="application/json")


def through_node(user):
    wizard.setup_node_set(user=user, address=ADDRESS, ntp_servers=NTP)


def through_preflight(user):
    through_node(user)
    finish_preflight(wizard.setup_preflight_start(user=user))
    wizard.setup_preflight_pass(user=user)


def through_licence(user):
    through_preflight(user)
    licence_install(data=minted(), user=user)
    wizard.setup_licence_done(user=user)


def through_mek(user) -> bytes:
    """Up to a confirmed MEK; returns the key."""
    through_licence(user)
    keys.mek_generate(user=user)
    key = keystore.mek_load()
    keys.mek_reveal(user=user)
    assert keys.mek_confirm(user=user, typed=mek.encode(key)).ok
    return key


def groups_in(html: str) -> list[str]:
    return re.findall(r'<code class="mek-group">([A-Z2-7]{4})</code>', html)


def post_licence(client, upload=None):
    return client.post(reverse("setup:licence"), {"licence_file": upload or licence_file()})
