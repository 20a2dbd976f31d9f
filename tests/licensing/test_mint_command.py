"""``manage.py licence_mint``: a development tool that signs with the TEST key, and
refuses to run under production settings."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from pamportal.crypto.licence import parse_licence, verify_licence
from pamportal.licensing.selectors import licence_status
from pamportal.licensing.services import licence_install

ROOT = Path(__file__).resolve().parents[2]


def test_mint_writes_a_licence_that_installs(tmp_path, db, admin_user):
    out = tmp_path / "acme.json"
    call_command(
        "licence_mint", "--customer", "ACME Ltd", "--edition", "enterprise", "--max-nodes", "3",
        "--days", "90", "--features", "audit-export, sso", "--not-before", "2026-01-01T00:00:00Z",
        "--licence-id", "LIC-CMD-1", "--out", str(out),
    )
    licence = parse_licence(out.read_bytes(), now=datetime(2026, 2, 1, tzinfo=timezone.utc), allow_test_keys=True)
    assert (licence.licence_id, licence.customer, licence.max_nodes) == ("LIC-CMD-1", "ACME Ltd", 3)
    assert licence.features == ("audit-export", "sso")
    assert licence.not_after == datetime(2026, 4, 1, tzinfo=timezone.utc)

    call_command("licence_mint", "--customer", "Now Ltd", "--edition", "standard", "--max-nodes", "1",
                 "--days", "30", "--out", str(out))
    licence_install(data=out.read_bytes(), user=admin_user)
    status = licence_status()
    assert status.ok and status.max_nodes == 1 and status.days_left == 30


def test_mint_to_standard_output(capsys):
    call_command("licence_mint", "--customer", "Stdout Ltd", "--edition", "standard", "--max-nodes", "2", "--days", "1")
    assert verify_licence(capsys.readouterr().out.encode(), allow_test_keys=True).customer == "Stdout Ltd"


def test_mint_reports_bad_arguments(tmp_path):
    with pytest.raises(CommandError, match="customer"):
        call_command("licence_mint", "--customer", "", "--edition", "x", "--max-nodes", "1", "--days", "1",
                     "--out", str(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()


def test_mint_refused_under_production_settings(tmp_path):
    out = tmp_path / "licence.json"
    env = {
        **os.environ,
        "PAM_ENV": "production",
        "PAM_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SETTINGS_MODULE": "pamportal.settings",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "licence_mint", "--customer", "ACME", "--edition", "enterprise",
         "--max-nodes", "3", "--days", "30", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "does not run with PAM_ENV=production" in result.stderr
    assert "TEST vendor key" in result.stderr
    assert not out.exists()
