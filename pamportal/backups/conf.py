"""Settings of backups, with their defaults (a setting of the same name in Django's
settings, or the environment variable, overrides each)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from pamportal.core.config import setting

from .archive import CHUNK_SIZE


def backup_dir() -> Path:
    """Where archives are written (0700); scratch areas of the proofs live in it too."""
    path = Path(setting("PAM_BACKUP_DIR", str(Path(settings.PAM_DATA_DIR) / "backups"), str))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def chunk_bytes() -> int:
    """Plaintext bytes per encrypted chunk: what a backup holds in memory at once."""
    return setting("PAM_BACKUP_CHUNK_BYTES", CHUNK_SIZE, int)


def tool_timeout() -> float:
    """Seconds pg_dump and pg_restore may take before the backup or proof fails."""
    return setting("PAM_BACKUP_TOOL_TIMEOUT", 3600.0, float)


def keep() -> int:
    """Proven backups kept on the node; older archives are removed only once a newer
    proven one exists (at least 1)."""
    return max(1, setting("PAM_BACKUP_KEEP", 7, int))
