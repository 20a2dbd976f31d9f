"""Settings of the audit reports, with their defaults (a setting of the same name in
Django's settings, or the environment variable, overrides each)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from pamportal.core.config import setting
from pamportal.nodes.selectors import node_address


def checkpoint_every() -> int:
    """A signed checkpoint is written when the chain reaches a multiple of this."""
    return setting("PAM_AUDIT_CHECKPOINT_EVERY", 1000, int)


def checkpoint_interval() -> float:
    """Seconds between the periodic checkpoints (written even when no event came)."""
    return setting("PAM_AUDIT_CHECKPOINT_INTERVAL", 3600.0, float)


def export_dir() -> Path:
    path = Path(setting("PAM_AUDIT_EXPORT_DIR", str(Path(settings.PAM_DATA_DIR) / "exports"), str))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def export_inline_max() -> int:
    """CSV/JSON Lines exports of at most this many events are written during the
    request; larger ones (and every PDF) run as a job."""
    return setting("PAM_AUDIT_EXPORT_INLINE_MAX", 20_000, int)


def export_keep_days() -> float:
    return setting("PAM_AUDIT_EXPORT_KEEP_DAYS", 7.0, float)


def pdf_event_rows() -> int:
    """The PDF lists at most this many events (its counts always cover them all)."""
    return setting("PAM_AUDIT_PDF_EVENT_ROWS", 2000, int)


def repeat_limit() -> int:
    """Anonymous refusals of one kind from one source address recorded one by one per
    window; beyond this they are counted and summed up in one event (0: no limit)."""
    return setting("PAM_AUDIT_REPEAT_LIMIT", 10, int)


def repeat_window() -> int:
    """Seconds of the window ``repeat_limit`` counts in (whole seconds, at least 1)."""
    return max(1, setting("PAM_AUDIT_REPEAT_WINDOW", 60, int))


def signing_key_path() -> Path:
    return Path(settings.PAM_DATA_DIR) / "audit-signing.key"


def siem_interval() -> float:
    """Seconds between forwarding runs of the beat schedule."""
    return setting("PAM_AUDIT_SIEM_INTERVAL", 30.0, float)


def siem_batch() -> int:
    return setting("PAM_AUDIT_SIEM_BATCH", 500, int)


def siem_max_per_run() -> int:
    return setting("PAM_AUDIT_SIEM_MAX_PER_RUN", 20_000, int)


def siem_timeout() -> float:
    return setting("PAM_AUDIT_SIEM_TIMEOUT", 10.0, float)


def siem_hostname() -> str:
    """The syslog HOSTNAME: the node address set in the setup wizard (else the one the
    node started with), as in the export manifests and the PDF."""
    return str(node_address() or "-")


def siem_sd_id() -> str:
    """RFC 5424 SD-ID of the event's structured data (name@private enterprise number;
    32473 is the number RFC 5612 sets aside for documentation)."""
    return setting("PAM_AUDIT_SIEM_SD_ID", "pamportal@32473", str)
