"""The follower's half of a join: this node joining a cluster, as the node itself
keeps it (the leader's half is ``JoinRequest``), what the leader keeps of the joining
node's database replica (``JoinReplica``), and this node's removal from a cluster as it
learnt of it (the leader's half is ``RemovalRequest``). Loaded by ``cluster.models``."""

from __future__ import annotations

from django.db import models


class JoinState(models.TextChoices):
    OPENED = "opened", "Bundle opened"
    CHECKED = "checked", "Checks against the leader passed"
    REQUESTED = "requested", "Waiting for approvals on the leader"
    JOINING = "joining", "Joining (etcd member starting)"
    JOINED = "joined", "Joined"
    FAILED = "failed", "Failed"


class ReplicaState(models.TextChoices):
    """The follower's replica steps, in order (``replication.join``)."""

    SEALED = "sealed", "Pre-join audit trail sealed"
    READY = "ready", "Replica bootstrapped and streaming"
    REPORTED = "reported", "Leader told the replica is ready"
    SWITCHED = "switched", "On the cluster's database"
    FAILED = "failed", "Replica failed (the leader undoes the join)"


class FollowerJoin(models.Model):
    """This node joining a cluster: what the bundle said and how far the join has come.
    Secrets are sealed under the MEK; the bundle itself is not kept."""

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.CharField(max_length=150)
    state = models.CharField(max_length=16, choices=JoinState.choices, default=JoinState.OPENED)
    own_address = models.CharField(max_length=253)
    leader_address = models.CharField(max_length=253)
    leader_ports = models.JSONField(default=dict)
    leader_version = models.CharField(max_length=32)
    cluster_id = models.CharField(max_length=128)
    bundle_id = models.CharField(max_length=64)
    bundle_expires = models.DateTimeField()
    ca_cert_pem = models.TextField()
    mek_fingerprint = models.CharField(max_length=64)
    sealed_join_token = models.TextField()
    sealed_poll_secret = models.TextField(blank=True)
    sealed_node_key = models.TextField(blank=True)
    csr_pem = models.TextField(blank=True)
    preflight = models.JSONField(default=list, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    last_status = models.JSONField(default=dict, blank=True)
    failure_reason = models.TextField(blank=True)
    # Whether the cluster's database is replicated (the leader's Patroni PostgreSQL), as
    # the leader said at the checks; None: not asked yet, or a leader that does not say.
    cluster_replicated = models.BooleanField(null=True, blank=True)
    # How far this node has come in becoming a replica of the cluster's database
    # (ReplicaState) and what it keeps of it: the pre-join head, the export, timings.
    replica_state = models.CharField(max_length=16, blank=True, default="")
    replica = models.JSONField(default=dict, blank=True)
    # The job following the request on the leader (the newest round of it).
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, db_column="job_id", related_name="+"
    )

    class Meta:
        # The table the model had when it lived in the setup app.
        db_table = "setup_followerjoin"
        ordering = ["-pk"]


class RemovalSource(models.TextChoices):
    LEADER = "leader", "told by the leader"
    ETCD = "etcd", "found in etcd's member list"


class NodeRemoval(models.Model):
    """This node was removed from a cluster: when it learnt it, from whom, and what the
    leader said (request, date, reason) once it said it. Kept after the wipe as history;
    the one with ``wiped_at`` unset is the removal every page shows."""

    learned_at = models.DateTimeField()
    source = models.CharField(max_length=8, choices=RemovalSource.choices)
    cluster_id = models.CharField(max_length=128)
    address = models.CharField(max_length=253)
    leader_address = models.CharField(max_length=253, blank=True)
    # From the leader's notice (empty while only etcd has told).
    request_number = models.PositiveIntegerField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    notice_received_at = models.DateTimeField(null=True, blank=True)
    # The revoked certificate, kept as evidence (the leader revoked it; this node
    # revokes nothing).
    certificate_serial = models.CharField(max_length=64, blank=True)
    certificate_sha256 = models.CharField(max_length=64, blank=True)
    etcd_member_name = models.CharField(max_length=253, blank=True)
    wiped_at = models.DateTimeField(null=True, blank=True)
    wiped_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"removal of {self.address} from cluster {self.cluster_id}"

    @property
    def removed_on(self):
        """The removal's date: the leader's, else when this node learnt it."""
        return self.removed_at or self.learned_at


class JoinReplica(models.Model):
    """On the leader: a join whose follower becomes a replica of the cluster's database
    (the leader's database was its Patroni member when the join was handed over), and
    what the follower reported once its replica streamed (or why it could not)."""

    request = models.OneToOneField("cluster.JoinRequest", on_delete=models.CASCADE, related_name="replica")
    created_at = models.DateTimeField(auto_now_add=True)
    # The database hosts handed over (the leader's database.json, leader first).
    hosts = models.JSONField(default=list)
    promoted_at = models.DateTimeField(null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=8, blank=True)  # "ready" or "failed"
    reason = models.TextField(blank=True)
    member = models.CharField(max_length=63, blank=True)
    postgres_port = models.PositiveIntegerField(null=True, blank=True)
    pre_join_position = models.PositiveBigIntegerField(null=True, blank=True)
    pre_join_hash = models.CharField(max_length=64, blank=True)
    export = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"replica of {self.request_id}"
