"""The node certificate check: valid now, and not about to expire."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from .base import (
    CheckResult,
    PreflightContext,
    Severity,
    _fail,
    _ok,
)


# --- the node certificate --------------------------------------------------------------
def check_certificate(ctx: PreflightContext, now: datetime | None = None) -> CheckResult:
    need = ctx.thresholds.cert_min_days
    kw = dict(threshold=f">= {need} days left")
    path = Path(ctx.certificate_path) if ctx.certificate_path else None
    if path is None or not path.is_file():
        return _fail(measured="no certificate", message=f"no node certificate at {path or '(no path set)'}",
                     remediation="create one with: manage.py tls_ensure", **kw)
    data = path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        return _fail(measured="unreadable", message=f"{path} is not an X.509 certificate: {exc}",
                     remediation="replace it: manage.py tls_ensure --force", **kw)
    now = now or datetime.now(timezone.utc)
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    days = (after - now).total_seconds() / 86400
    measured = f"{days:.0f} days left (until {after:%Y-%m-%d %H:%M} UTC)"
    if now < before:
        return _fail(measured=f"not valid until {before:%Y-%m-%d %H:%M} UTC", severity=Severity.ERROR,
                     message=f"the node certificate is not valid yet (from {before:%Y-%m-%d %H:%M} UTC): "
                             f"is this clock behind?", remediation="check the clock, then: manage.py tls_ensure --force",
                     **kw)
    if now >= after:
        return _fail(measured=f"expired {after:%Y-%m-%d %H:%M} UTC", severity=Severity.ERROR,
                     message=f"the node certificate expired on {after:%Y-%m-%d %H:%M} UTC",
                     remediation="renew it: manage.py tls_ensure --force", **kw)
    if days < need:
        return _fail(measured=measured, severity=Severity.WARNING,
                     message=f"the node certificate expires in {days:.0f} days",
                     remediation="renew it before it expires: manage.py tls_ensure --force", **kw)
    return _ok(measured=measured, message=f"the node certificate is valid until {after:%Y-%m-%d} UTC", **kw)
