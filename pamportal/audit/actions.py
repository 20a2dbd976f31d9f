"""The vocabulary of the audit trail: what happened and how it ended."""

from django.db import models


class AuditAction(models.TextChoices):
    # Setup
    SETUP_TOKEN_ISSUED = "setup.token_issued", "Setup token issued"
    SETUP_TOKEN_ACCEPTED = "setup.token_accepted", "Setup token accepted"
    SETUP_TOKEN_REJECTED = "setup.token_rejected", "Setup token rejected"
    SETUP_TOTP_REJECTED = "setup.totp_rejected", "Setup TOTP code rejected"
    SETUP_ADMIN_CREATED = "setup.admin_created", "First administrator created"
    # Sessions
    LOGIN_SUCCEEDED = "auth.login", "Logged in"
    LOGIN_FAILED = "auth.login_failed", "Login failed"
    LOGIN_LOCKED_OUT = "auth.locked_out", "Locked out"
    LOGOUT = "auth.logout", "Logged out"
    SESSION_EXPIRED = "auth.session_expired", "Session expired"
    TOTP_ENROLLED = "auth.totp_enrolled", "TOTP enrolled"
    TOTP_REJECTED = "auth.totp_rejected", "TOTP code rejected"
    PASSWORD_CHANGED = "auth.password_changed", "Password changed"
    ACCESS_DENIED = "auth.access_denied", "Page refused"
    # User administration
    USER_CREATED = "user.created", "User created"
    USER_DISABLED = "user.disabled", "User disabled"
    USER_ENABLED = "user.enabled", "User enabled"
    USER_RESET = "user.reset", "User reset"
    USER_UNLOCKED = "user.unlocked", "User unlocked"
    # Jobs
    JOB_STARTED = "job.started", "Job started"
    JOB_FINISHED = "job.finished", "Job finished"
    JOB_RERUN = "job.rerun", "Job run again"
    JOB_CANCELLED = "job.cancelled", "Job cancelled"
    STEP_LEASE_EXPIRED = "job.lease_expired", "Step lease expired"
    # The trail itself
    AUDIT_VERIFIED = "audit.verified", "Audit chain verified"
    # Keys and finalise
    SETUP_NODE_SET = "setup.node_set", "Node address and NTP servers set"
    SETUP_PREFLIGHT_PASSED = "setup.preflight_passed", "Setup preflight passed"
    SETUP_LICENCE_DONE = "setup.licence_done", "Setup licence step done"
    SETUP_FINALISED = "setup.finalised", "Setup finalised"
    MEK_GENERATED = "mek.generated", "Master Encryption Key generated"
    MEK_SHOWN = "mek.shown", "Master Encryption Key shown"
    MEK_DOWNLOADED = "mek.downloaded", "Master Encryption Key downloaded"
    MEK_DOWNLOAD_REFUSED = "mek.download_refused", "Master Encryption Key download refused"
    MEK_CONFIRMED = "mek.confirmed", "Master Encryption Key copy confirmed"
    MEK_CONFIRM_FAILED = "mek.confirm_failed", "Master Encryption Key confirmation failed"
    MEK_DISCARDED = "mek.discarded", "Master Encryption Key discarded"
    MEK_CHECKED = "mek.checked", "Master Encryption Key checked"
    CA_CREATED = "certificate.ca_created", "Cluster CA created"
    NODE_CERTIFICATE_ISSUED = "certificate.node_issued", "Node certificate issued"
    # Licence
    LICENCE_INSTALLED = "licence.installed", "Licence installed"
    LICENCE_REFUSED = "licence.refused", "Licence file refused"
    # Preflight
    PREFLIGHT_CHECK_FAILED = "preflight.check_failed", "Preflight check failed"
    PREFLIGHT_WARNING_ACCEPTED = "preflight.warning_accepted", "Preflight warning accepted"
    PREFLIGHT_ACCEPT_REFUSED = "preflight.accept_refused", "Preflight acceptance refused"
    # Audit reports
    AUDIT_EXPORTED = "audit.exported", "Audit trail exported"
    AUDIT_CHECKPOINT_REQUESTED = "audit.checkpoint", "Audit checkpoint signed on request"
    AUDIT_SIGNING_KEY_CREATED = "audit.signing_key_created", "Audit signing key created"
    AUDIT_SIEM_CONFIGURED = "audit.siem_configured", "SIEM forwarding configured"
    AUDIT_SIEM_RESET = "audit.siem_cursor_set", "SIEM forwarding cursor moved"
    AUDIT_REPEATS_COUNTED = "audit.repeats_counted", "Repeated refusals counted"
    # Cluster
    CLUSTER_BUNDLE_CREATED = "cluster.bundle_created", "Joining bundle created"
    CLUSTER_BUNDLE_DOWNLOADED = "cluster.bundle_downloaded", "Joining bundle downloaded"
    CLUSTER_BUNDLE_USED = "cluster.bundle_used", "Joining bundle used"
    CLUSTER_BUNDLE_REFUSED = "cluster.bundle_refused", "Joining bundle refused"
    CLUSTER_BUNDLE_REVOKED = "cluster.bundle_revoked", "Joining bundle revoked"
    CLUSTER_BUNDLE_EXPIRED = "cluster.bundle_expired", "Joining bundle expired"
    CLUSTER_JOIN_REQUESTED = "cluster.join_requested", "Join requested"
    CLUSTER_JOIN_REFUSED = "cluster.join_refused", "Join request refused"
    CLUSTER_JOIN_POLL_REFUSED = "cluster.join_poll_refused", "Join request poll refused"
    CLUSTER_VOTE = "cluster.vote", "Vote on a cluster request"
    CLUSTER_VOTE_REFUSED = "cluster.vote_refused", "Vote refused"
    CLUSTER_REQUEST_APPROVED = "cluster.request_approved", "Cluster request approved"
    CLUSTER_REQUEST_DENIED = "cluster.request_denied", "Cluster request denied"
    CLUSTER_REQUEST_EXPIRED = "cluster.request_expired", "Cluster request expired"
    CLUSTER_REQUEST_VOIDED = "cluster.request_voided", "Cluster request changed after votes"
    CLUSTER_JOIN_CERT_ISSUED = "cluster.join_cert_issued", "Joining node's certificate issued"
    CLUSTER_JOIN_LEARNER_ADDED = "cluster.join_learner_added", "Joining node added to etcd as a learner"
    CLUSTER_JOIN_HANDED_OVER = "cluster.join_handed_over", "Certificate and etcd cluster handed to the joining node"
    CLUSTER_JOIN_PROMOTED = "cluster.join_promoted", "Joining node promoted to a voting etcd member"
    CLUSTER_JOINED = "cluster.joined", "Node joined the cluster"
    CLUSTER_JOIN_FAILED = "cluster.join_failed", "Join failed and was undone"
    CLUSTER_POLICY_CHANGED = "cluster.policy_changed", "Approval policy changed"
    CLUSTER_REMOVAL_REQUESTED = "cluster.removal_requested", "Node removal requested"
    CLUSTER_REMOVAL_REFUSED = "cluster.removal_refused", "Node removal refused"
    CLUSTER_NODE_REMOVED = "cluster.node_removed", "Node removed from the cluster"
    CLUSTER_REMOVAL_FAILED = "cluster.removal_failed", "Node removal failed"
    CLUSTER_CERT_REVOKED = "cluster.cert_revoked", "Node certificate revoked"

    # Joining a cluster (follower side)
    JOIN_REFUSED_LOCALLY = "join.refused", "Join refused on this node"
    JOIN_BUNDLE_OPENED = "join.bundle_opened", "Joining bundle opened"
    JOIN_PREFLIGHT = "join.preflight", "Checks against the leader"
    JOIN_REQUESTED = "join.requested", "Join requested from the leader"
    JOIN_HANDOVER_APPLIED = "join.handover_applied", "Certificate and etcd configuration installed"
    JOIN_COMPLETED = "join.completed", "Joined the cluster"
    JOIN_FAILED = "join.failed", "Join failed"
    JOIN_DISCARDED = "join.discarded", "Unsent join discarded to start again"
    # Removed from a cluster (the removed node's side; the leader's is CLUSTER_*)
    NODE_REMOVED = "node.removed", "This node learned it was removed from its cluster"
    NODE_REMOVAL_NOTICE = "node.removal_notice", "The leader's removal notice received"
    NODE_REMOVAL_NOTICE_REFUSED = "node.removal_notice_refused", "Removal notice refused"
    NODE_CLUSTER_STATE_WIPED = "node.cluster_state_wiped", "Cluster state wiped after a removal"
    NODE_CLUSTER_WIPE_REFUSED = "node.cluster_wipe_refused", "Wipe of the cluster state refused"
    CLUSTER_REMOVAL_NOTICE_SENT = "cluster.removal_notice_sent", "Removed node told of its removal"
    CLUSTER_REMOVAL_NOTICE_FAILED = "cluster.removal_notice_failed", "Removed node could not be told (retried)"
    # The node's database moved from SQLite onto its Patroni PostgreSQL member
    DATABASE_MOVE_STARTED = "database.move_started", "Move of the database to PostgreSQL started"
    DATABASE_MOVED = "database.moved", "Database moved to PostgreSQL"
    DATABASE_MOVE_FAILED = "database.move_failed", "Move of the database to PostgreSQL failed or refused"
    # A join that makes the follower a replica of the cluster's database
    JOIN_AUDIT_SEALED = "join.audit_sealed", "Pre-join audit trail sealed into a signed export"
    JOIN_REPLICA_READY = "join.replica_ready", "Database replica bootstrapped from the leader"
    JOIN_DATABASE_SWITCHED = "join.database_switched", "This node switched to the cluster's database"
    CLUSTER_JOIN_REPLICA_READY = "cluster.join_replica_ready", "Joining node's database replica ready, its pre-join trail sealed"
    CLUSTER_JOIN_REPLICA_FAILED = "cluster.join_replica_failed", "Joining node's database replica failed"
    # The console's record of who leads, brought in line with Patroni's leader
    CLUSTER_LEADER_CHANGED = "cluster.leader_changed", "Cluster leader changed (as Patroni's leader)"
    # Moving the cluster's leadership (the Patroni primary), approved
    CLUSTER_LEADERSHIP_REQUESTED = "cluster.leadership_requested", "Change of cluster leader requested"
    CLUSTER_LEADERSHIP_REFUSED = "cluster.leadership_refused", "Change of cluster leader refused"
    CLUSTER_LEADERSHIP_MOVED = "cluster.leadership_moved", "Cluster leadership moved"
    CLUSTER_LEADERSHIP_FAILED = "cluster.leadership_failed", "Change of cluster leader failed"
    CLUSTER_FAILOVER_MODE_CHANGED = "cluster.failover_mode_changed", "Automatic failover switched on or off"
    CLUSTER_FAILOVER_MODE_REFUSED = "cluster.failover_mode_refused", "Change of the failover mode refused"
    # Backups
    BACKUP_CREATED = "backup.created", "Backup written and proven"
    BACKUP_FAILED = "backup.failed", "Backup failed or its proof failed"
    BACKUP_RESTORED = "backup.restored", "Backup restored onto this node"
    BACKUP_PRUNED = "backup.pruned", "Backup archive removed by retention"
    BACKUP_DOWNLOADED = "backup.downloaded", "Backup archive downloaded"
    BACKUP_REFUSED = "backup.refused", "Backup start or download refused"


# What the PDF report lists under "Approvals and votes": requests that need approval,
# the votes on them and how each ended, and changes to the approval policy.
APPROVAL_ACTIONS = frozenset({
    AuditAction.CLUSTER_JOIN_REQUESTED,
    AuditAction.CLUSTER_REMOVAL_REQUESTED,
    AuditAction.CLUSTER_LEADERSHIP_REQUESTED,
    AuditAction.CLUSTER_VOTE,
    AuditAction.CLUSTER_VOTE_REFUSED,
    AuditAction.CLUSTER_REQUEST_APPROVED,
    AuditAction.CLUSTER_REQUEST_DENIED,
    AuditAction.CLUSTER_REQUEST_EXPIRED,
    AuditAction.CLUSTER_REQUEST_VOIDED,
    AuditAction.CLUSTER_POLICY_CHANGED,
})


class Outcome(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    DENIED = "denied", "Denied"
    FAILED = "failed", "Failed"
