"""``manage.py setup_token``: prints a working token, keeps only its hash, 0600 file."""

from __future__ import annotations

import hashlib
import io
import re
import stat
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from pamportal.audit.actions import AuditAction
from pamportal.setup import selectors
from pamportal.setup.models import SetupToken
from tests.accounts.helpers import events

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command("setup_token", *args, stdout=out)
    return out.getvalue()


def token_of(output: str) -> str:
    match = re.search(r"^Setup token: (\S+)$", output, re.M)
    assert match, output
    return match.group(1)


def test_prints_a_token_that_works_and_stores_only_its_hash(client, data_dir):
    token = token_of(run())
    path = data_dir / "setup-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    row = SetupToken.objects.get()
    normalised = token.replace("-", "")
    assert row.token_hash == hashlib.sha256(normalised.encode()).hexdigest()
    for value in (row.token_hash, str(row.created_at), str(row.expires_at)):
        assert normalised not in value and token not in value
    issued = events(AuditAction.SETUP_TOKEN_ISSUED)
    assert len(issued) == 1 and token not in issued[0].details and normalised not in issued[0].details
    assert issued[0].actor_name == "console"

    response = client.post(reverse("setup:token"), {"token": token})
    assert response.status_code == 302 and response["Location"] == reverse("setup:administrator")


def test_prints_the_same_token_again_and_new_on_request(data_dir):
    first = token_of(run())
    assert token_of(run()) == first
    assert SetupToken.objects.count() == 1
    second = token_of(run("--new"))
    assert second != first
    old, new = SetupToken.objects.order_by("created_at")
    assert old.superseded_at is not None and new.superseded_at is None
    assert (data_dir / "setup-token").read_text().strip() == second


def test_issues_a_new_token_when_the_file_does_not_match(data_dir):
    first = token_of(run())
    (data_dir / "setup-token").write_text("NOT-THE-TOKEN\n")
    second = token_of(run())
    assert second != first
    assert selectors.setup_token_current().token == second


def test_issues_a_new_token_when_the_current_one_expired(data_dir):

    first = token_of(run())
    SetupToken.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    assert token_of(run()) != first


def test_says_setup_is_complete_without_a_token(admin_user, data_dir):
    output = run()
    assert "Setup is complete" in output and "Setup token:" not in output
    assert not SetupToken.objects.exists()
    assert not (data_dir / "setup-token").exists()
