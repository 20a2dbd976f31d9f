"""Production settings pass Django's deployment checks; every page carries the headers."""

import os
import subprocess
import sys

from tests.support.node import REPO


def test_check_deploy_clean_under_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_", "DJANGO_"))}
    env.update(PAM_ENV="production", PAM_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="pamportal.settings")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    # The secret key was generated into the data dir, readable by the owner only.
    key_file = tmp_path / "secret_key"
    assert key_file.exists() and (key_file.stat().st_mode & 0o777) == 0o600
    assert len(key_file.read_text().strip()) >= 50


def test_check_deploy_fails_under_development_settings(tmp_path):
    """The check above can fail: development settings (no SSL redirect) are reported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_", "DJANGO_"))}
    env.update(PAM_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="pamportal.settings")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT" in result.stderr + result.stdout


def test_security_headers_on_every_page(client, db):
    response = client.get("/setup/", secure=True)
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response["Strict-Transport-Security"].startswith("max-age=63072000")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Request-ID"]
