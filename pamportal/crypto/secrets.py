"""What is stored instead of a secret token (a join token, a poll secret, a setup
token): its SHA-256, hex. Tokens are long and random, so a plain hash is enough."""

from __future__ import annotations

import hashlib


def secret_digest(token: str) -> str:
    """The SHA-256 of ``token`` (UTF-8), hex: compare with ``hmac.compare_digest``."""
    if not isinstance(token, str):
        raise TypeError("a secret token is text")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
