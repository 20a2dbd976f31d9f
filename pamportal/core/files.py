"""The one way to put a private file on disk (keys, tokens, certificates, exports): a
reader sees either the old file or the whole new one, never a torn or briefly
world-readable one, and the write survives a power cut once this returns."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def private_file(path: str | os.PathLike, mode: int = 0o600, *, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Write ``path`` through the handle this yields: a temporary file in the same
    directory (created 0600, so never readable by others), flushed and fsynced, given
    ``mode`` before it takes the name, then renamed over ``path`` and the directory
    fsynced. If the block raises, ``path`` is untouched and the temporary file gone.

    ``exclusive``: create ``path`` only if it does not exist (first writer wins);
    raises FileExistsError, without touching the file, when it does."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temporary, path)  # atomic, and refuses an existing name
        else:
            os.replace(temporary, path)
        _fsync_dir(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_private(path: str | os.PathLike, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically and durably with ``mode`` (see
    ``private_file``)."""
    with private_file(path, mode, exclusive=exclusive) as handle:
        handle.write(data)
