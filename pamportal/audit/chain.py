"""The audit hash chain, free of Django: canonical encoding, hashing and verification.

Each event's hash is SHA-256 over a length-prefixed encoding of its fields in a fixed
order, the previous event's hash among them. Length prefixes make the encoding
unambiguous without escaping, and cheap enough to verify hundreds of thousands of
events a second.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

GENESIS_HASH = "0" * 64
_DOMAIN = b"pamportal-audit-v1\n"

# Field order of the canonical encoding; verification reads rows in this order.
FIELDS = (
    "position",
    "time",
    "actor_id",
    "actor_name",
    "source_ip",
    "request_id",
    "action",
    "target",
    "outcome",
    "details",
    "prev_hash",
)


def canonical_details(details: dict | None) -> str:
    """Details as canonical JSON text: sorted keys, no spaces, UTF-8."""
    return json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    position: int,
    time: datetime,
    actor_id: int | None,
    actor_name: str,
    source_ip: str,
    request_id: str,
    action: str,
    target: str,
    outcome: str,
    details: str,
    prev_hash: str,
) -> str:
    parts = (
        str(position),
        canonical_time(time),
        "" if actor_id is None else str(actor_id),
        actor_name,
        source_ip or "",
        request_id or "",
        action,
        target or "",
        outcome,
        details,
        prev_hash,
    )
    digest = hashlib.sha256(_DOMAIN)
    for part in parts:
        data = part.encode("utf-8")
        digest.update(b"%d:" % len(data))
        digest.update(data)
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class ChainResult:
    verified: int
    first_bad_position: int | None = None
    reason: str = ""
    last_position: int = 0
    last_hash: str = GENESIS_HASH

    @property
    def ok(self) -> bool:
        return self.first_bad_position is None


def verify_rows(rows: Iterable[tuple]) -> ChainResult:
    """Walk rows (the FIELDS in order, then the stored hash) sorted by position.

    Reports the first position at which the chain stops being what was written:
    a row whose own hash does not match its fields (edited), a gap (deleted), a row
    whose predecessor is not the one it recorded (forged or re-ordered). When a row
    is self-consistent but its successor recorded another hash for it, the row itself
    is the one that changed since, so it is the one named.
    """
    expected_position = 1
    prev_hash = GENESIS_HASH
    verified = 0
    for row in rows:
        position, time, actor_id, actor_name, source_ip, request_id, action, target, outcome, details, row_prev, stored = row
        if position != expected_position:
            if position > expected_position:
                return ChainResult(verified, expected_position, f"event {expected_position} is missing (next is {position})")
            return ChainResult(verified, position, f"event {position} appears out of order after {expected_position - 1}")
        computed = event_hash(position, time, actor_id, actor_name, source_ip, request_id, action, target, outcome, details, row_prev)
        if computed != stored:
            return ChainResult(verified, position, f"event {position} does not match its hash (its content was changed)")
        if row_prev != prev_hash:
            if position == 1:
                return ChainResult(verified, 1, "event 1 does not start the chain")
            return ChainResult(
                max(verified - 1, 0),
                position - 1,
                f"event {position - 1} is not the event that event {position} followed (changed or replaced)",
            )
        verified += 1
        prev_hash = stored
        expected_position += 1
    return ChainResult(verified, None, "", expected_position - 1, prev_hash)
