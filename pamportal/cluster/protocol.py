"""The cluster setup API's wire format, shared by the leader and the follower.

Pure functions: canonical JSON (what the join proof and the request hash cover),
strict parsing of a join request, version compatibility, and the refusal codes with
the messages a follower shows.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pamportal.crypto import strictjson
from pamportal.crypto.bundle import canonical_json, normalize_address

SETUP_API_PREFIX = "/api/setup/v1/"
# The MEK purpose under which the leader hands a joining replica the cluster's TOTP seal
# key (``accounts.totp_seal``): the follower proved it holds the MEK, and nothing else can
# open it.
TOTP_KEY_PURPOSE = "cluster totp-seal key v1"
# A join request nests 3 deep (the preflight summary's lists); room is left so that a
# follower adding a little structure to its summary is not refused for it.
MAX_DEPTH = 16
DELEGATION_API_PREFIX = "/api/delegation/v1/"

# The join request, exactly these fields; "proof" covers all the others.
JOIN_FIELDS = frozenset(
    {"bundle_id", "token", "follower_address", "follower_version", "csr_pem", "preflight_summary", "proof"}
)
_MAX_TEXT = {"bundle_id": 64, "token": 256, "follower_address": 253, "follower_version": 32, "csr_pem": 8192,
             "proof": 256}
_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})\.(\d{1,6})$")


class ProtocolError(ValueError):
    """A request that does not follow the format; ``code`` is one of REFUSALS."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# code -> (HTTP status, what the follower shows)
REFUSALS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "The join request is not valid: {detail}"),
    "too_large": (413, "The join request is larger than the leader accepts ({detail} bytes)."),
    "too_deep": (400, "The join request nests JSON more than {detail} levels deep; a join request nests far less."),
    "lone_surrogate": (400, "The join request holds text that is not valid Unicode in {detail}: a \\uD800-\\uDFFF "
                            "escape without its pair (a lone surrogate)."),
    "nul_character": (400, "The join request holds a NUL character (\\u0000) in {detail}."),
    "number_too_large": (400, "The join request holds a number larger than the leader accepts ({detail})."),
    "not_ready": (503, "The leader is not ready to accept joins: {detail}"),
    "unknown_bundle": (403, "The leader does not know this joining bundle. Generate a new one on the leader."),
    "bad_token": (403, "The bundle's join token is not the one the leader issued: the bundle file was altered."),
    "expired": (403, "This joining bundle expired on {detail}. Generate a new one on the leader."),
    "used": (403, "This joining bundle was already used; a bundle works once. Generate a new one on the leader."),
    "revoked": (403, "This joining bundle was revoked on the leader. Generate a new one on the leader."),
    "wrong_address": (403, "This joining bundle is for {detail}, not for this node. Use the bundle made for this "
                           "node's address."),
    "bad_proof": (403, "The proof of the Master Encryption Key does not match: the MEK typed on this node is not "
                       "the cluster's."),
    "incompatible_version": (409, "This node runs version {detail}; the leader runs {extra}. A node joins only a "
                                  "cluster of the same major.feature version: upgrade it first."),
    "bad_csr": (400, "The certificate request is not valid: {detail}"),
    "unauthorised": (403, "The poll secret does not match this join request."),
    "unknown_request": (404, "The leader has no such join request."),
    "replica_unexpected": (409, "The leader does not expect a database replica report for this join now: {detail}"),
}


def refusal_message(code: str, detail: str = "", extra: str = "") -> str:
    return REFUSALS[code][1].format(detail=detail, extra=extra)


def canonical(value: Any) -> bytes:
    """The one byte encoding of a JSON value that proofs and hashes are computed over:
    keys sorted, no whitespace, ASCII only (non-ASCII escaped), no NaN/Infinity."""
    return canonical_json(value)


def proof_message(request: dict[str, Any]) -> bytes:
    """What the follower's MEK proof covers: the canonical request without "proof"."""
    return canonical({k: v for k, v in request.items() if k != "proof"})


def join_request_hash(*, bundle_id: str, follower_address: str, follower_version: str, csr_pem: str,
                      preflight_summary: dict) -> str:
    """SHA-256 over the canonical operation the approvers vote on."""
    operation = {
        "kind": "cluster.join", "bundle_id": str(bundle_id), "follower_address": follower_address,
        "follower_version": follower_version, "csr_pem": csr_pem, "preflight_summary": preflight_summary,
    }
    return hashlib.sha256(canonical(operation)).hexdigest()


def removal_request_hash(*, address: str, etcd_member_id: str, reason: str) -> str:
    operation = {"kind": "cluster.remove", "address": address, "etcd_member_id": etcd_member_id, "reason": reason}
    return hashlib.sha256(canonical(operation)).hexdigest()


def parse_version(text: str) -> tuple[int, int, int]:
    match = _VERSION.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a version of the form major.feature.patch")
    return int(match[1]), int(match[2]), int(match[3])


def versions_compatible(leader: str, follower: str) -> bool:
    """A node joins only a cluster of the same major.feature (patches may differ)."""
    return parse_version(leader)[:2] == parse_version(follower)[:2]


_FEATURE_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})$")


def feature_version(version: str) -> str:
    """``major.feature`` of a ``major.feature.patch`` version (what the leader's
    ``time`` answer tells anyone who asks)."""
    major, feature, _ = parse_version(version)
    return f"{major}.{feature}"


def feature_version_compatible(leader_feature: str, follower: str) -> bool:
    """``versions_compatible`` when the leader's side is only ``major.feature`` (or a
    full version, from a leader that still answers with one)."""
    match = _FEATURE_VERSION.match(leader_feature or "")
    if match is None:
        return versions_compatible(leader_feature, follower)
    return (int(match[1]), int(match[2])) == parse_version(follower)[:2]


def _bad_request(detail: str) -> ProtocolError:
    return ProtocolError("bad_request", refusal_message("bad_request", detail))


def _refusal_of(refused: strictjson.Refused, body: bytes) -> ProtocolError:
    """The setup API's code and message for what ``strictjson.load`` refused."""
    code = refused.code
    if code == strictjson.TOO_DEEP:
        return ProtocolError("too_deep", refusal_message("too_deep", str(MAX_DEPTH)))
    if code == strictjson.DUPLICATE_KEY:
        return _bad_request("a field appears twice")
    if code in (strictjson.LONE_SURROGATE, strictjson.NUL_CHARACTER):
        return ProtocolError(code, refusal_message(code, refused.where))
    if code == strictjson.NUMBER_TOO_LARGE:
        return ProtocolError("number_too_large", refusal_message("number_too_large", refused.detail))
    if code == strictjson.NOT_UTF8:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return _bad_request("the body is not UTF-8")
        return _bad_request("the body is not JSON")  # UTF-8 with a NUL byte: never JSON
    if code == strictjson.NOT_JSON and not refused.detail:
        return _bad_request("NaN and Infinity are not allowed in JSON")
    return _bad_request("the body is not JSON")  # not JSON, or a byte-order mark before it


def loads_strict(body: bytes, *, max_bytes: int) -> Any:
    """JSON from a request body: bounded in size and depth, UTF-8, no duplicate keys,
    no NaN/Infinity, no huge numbers, no lone surrogate or NUL in any key or text."""
    if len(body) > max_bytes:
        raise ProtocolError("too_large", refusal_message("too_large", str(max_bytes)))
    try:
        return strictjson.load(body, max_depth=MAX_DEPTH)
    except strictjson.Refused as refused:
        raise _refusal_of(refused, body) from None


@dataclass(frozen=True)
class JoinPayload:
    bundle_id: str
    token: str
    follower_address: str
    follower_version: str
    csr_pem: str
    preflight_summary: dict
    proof: str
    raw: dict

    @property
    def proof_message(self) -> bytes:
        return proof_message(self.raw)


def parse_join(data: Any) -> JoinPayload:
    """Check the join request's shape: exactly JOIN_FIELDS, strings where strings go
    (bounded), preflight_summary an object. The meaning is checked by the leader."""
    if not isinstance(data, dict):
        raise _bad_request("the body must be a JSON object")
    missing = sorted(JOIN_FIELDS - data.keys())
    extra = sorted(data.keys() - JOIN_FIELDS)
    if missing:
        raise _bad_request(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if extra:
        raise _bad_request(f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(extra)}")
    for name, limit in _MAX_TEXT.items():
        value = data[name]
        if not isinstance(value, str) or not value:
            raise _bad_request(f"{name} must be a non-empty string")
        if len(value) > limit:
            raise _bad_request(f"{name} is longer than {limit} characters")
    if not isinstance(data["preflight_summary"], dict):
        raise _bad_request("preflight_summary must be an object")
    return JoinPayload(
        bundle_id=data["bundle_id"], token=data["token"], follower_address=normalize_address(data["follower_address"]),
        follower_version=data["follower_version"], csr_pem=data["csr_pem"],
        preflight_summary=data["preflight_summary"], proof=data["proof"], raw=data,
    )


# --- the follower's database replica (a join into a cluster whose database is replicated) ---
# ``POST join/<request_id>/replica``: the follower's report once its replica streamed (or
# why it could not), exactly these fields. A leader whose database is replicated tells the
# follower so in the join status ("replica") and hands over the database hosts; a follower
# that predates replicas is refused earlier, by the major.feature version check.
REPLICA_FIELDS = frozenset({"outcome", "reason", "member", "postgres_port", "pre_join_head", "export"})
REPLICA_OUTCOMES = ("ready", "failed")
REPLICA_EXPORT_FIELDS = frozenset({"file", "manifest", "sha256", "manifest_sha256", "key_id", "events"})
_HASH = re.compile(r"^[0-9a-f]{64}$")
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
REPLICA_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class ReplicaReport:
    outcome: str
    reason: str
    member: str
    head_position: int | None
    head_hash: str
    export: dict
    postgres_port: int | None = None

    def as_json(self) -> dict:
        return {
            "outcome": self.outcome, "reason": self.reason, "member": self.member, "postgres_port": self.postgres_port,
            "pre_join_head": None if self.head_position is None else {"position": self.head_position,
                                                                       "hash": self.head_hash},
            "export": self.export or None,
        }


def _exact(data: Any, fields: frozenset, what: str) -> dict:
    if not isinstance(data, dict):
        raise _bad_request(f"{what} must be a JSON object")
    missing, extra = sorted(fields - data.keys()), sorted(data.keys() - fields)
    if missing:
        raise _bad_request(f"{what}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if extra:
        raise _bad_request(f"{what}: unknown field{'s' if len(extra) > 1 else ''} {', '.join(extra)}")
    return data


def _text(value: Any, name: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise _bad_request(f"{name} must be a{'' if empty else ' non-empty'} string")
    if len(value) > limit:
        raise _bad_request(f"{name} is longer than {limit} characters")
    return value


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _bad_request(f"{name} must be a whole number from 0")
    return value


def parse_replica_report(data: Any) -> ReplicaReport:
    """Check a replica report's shape: exactly REPLICA_FIELDS; "ready" carries the
    pre-join head (position, SHA-256 hash) and the export's digests, "failed" a reason."""
    data = _exact(data, REPLICA_FIELDS, "the replica report")
    outcome = data["outcome"]
    if outcome not in REPLICA_OUTCOMES:
        raise _bad_request(f"outcome must be one of {', '.join(REPLICA_OUTCOMES)}")
    reason = _text(data["reason"], "reason", 2000, empty=outcome == "ready")
    member = _text(data["member"], "member", 63)
    if not _MEMBER.match(member):
        raise _bad_request("member is not a member name")
    head, export = data["pre_join_head"], data["export"]
    if outcome == "failed":
        if head is not None or export is not None or data["postgres_port"] is not None:
            raise _bad_request("a failed replica report carries no postgres_port, pre_join_head or export (null)")
        return ReplicaReport(outcome, reason, member, None, "", {})
    port = data["postgres_port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _bad_request("postgres_port must be a TCP port (1-65535)")
    head = _exact(head, frozenset({"position", "hash"}), "pre_join_head")
    position = _count(head["position"], "pre_join_head.position")
    if not isinstance(head["hash"], str) or not _HASH.match(head["hash"]):
        raise _bad_request("pre_join_head.hash must be a SHA-256 in lower-case hex")
    export = _exact(export, REPLICA_EXPORT_FIELDS, "export")
    for name in ("sha256", "manifest_sha256"):
        if not isinstance(export[name], str) or not _HASH.match(export[name]):
            raise _bad_request(f"export.{name} must be a SHA-256 in lower-case hex")
    clean = {"file": _text(export["file"], "export.file", 200), "manifest": _text(export["manifest"], "export.manifest", 200),
             "sha256": export["sha256"], "manifest_sha256": export["manifest_sha256"],
             "key_id": _text(export["key_id"], "export.key_id", 128), "events": _count(export["events"], "export.events")}
    if clean["events"] != position:
        raise _bad_request("the export must hold the whole pre-join trail (export.events = pre_join_head.position)")
    return ReplicaReport(outcome, reason, member, position, head["hash"], clean, port)
