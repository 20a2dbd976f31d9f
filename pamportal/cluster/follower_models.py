"""The follower's half of a join: this node joining a cluster, as the node itself
keeps it (the leader's half is ``JoinRequest``), and this node's removal from a
cluster as it learnt of it (the leader's half is ``RemovalRequest``). Loaded by
``cluster.models``."""

from __future__ import annotations

from django.db import models


class JoinState(models.TextChoices):
    OPENED = "opened", "Bundle opened"
    CHECKED = "checked", "Checks against the leader passed"
    REQUESTED = "requested", "Waiting for approvals on the leader"
    JOINING = "joining", "Joining (etcd member starting)"
    JOINED = "joined", "Joined"
    FAILED = "failed", "Failed"


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
