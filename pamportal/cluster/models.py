"""The cluster as the leader knows it: its members, the joining bundles it handed out,
the approval policy, join and removal requests with their votes, and revoked
certificates."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from pamportal.accounts.roles import Role


class MemberRole(models.TextChoices):
    LEADER = "leader", "Leader"
    FOLLOWER = "follower", "Follower"


class MemberState(models.TextChoices):
    JOINING = "joining", "Joining"
    ACTIVE = "active", "Active"
    REMOVING = "removing", "Being removed"
    REMOVED = "removed", "Removed"
    FAILED = "failed", "Failed"


# Members that count against the licence's node cap.
LIVE_MEMBER_STATES = (MemberState.JOINING, MemberState.ACTIVE, MemberState.REMOVING)


class ClusterMember(models.Model):
    address = models.CharField(max_length=253, unique=True)
    role = models.CharField(max_length=16, choices=MemberRole.choices, default=MemberRole.FOLLOWER)
    etcd_member_id = models.CharField(max_length=24, blank=True, help_text="etcd's 64-bit id, in decimal")
    etcd_name = models.CharField(max_length=253, blank=True)
    version = models.CharField(max_length=32, blank=True)
    state = models.CharField(max_length=16, choices=MemberState.choices, default=MemberState.JOINING)
    cert_serial = models.CharField(max_length=64, blank=True)
    joined_at = models.DateTimeField(null=True, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_ok = models.BooleanField(null=True)
    last_heartbeat_detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-role", "address"]

    def __str__(self) -> str:
        return f"{self.get_role_display()} {self.address}"


class BundleState(models.TextChoices):
    OUTSTANDING = "outstanding", "Outstanding"
    USED = "used", "Used"
    REVOKED = "revoked", "Revoked"
    EXPIRED = "expired", "Expired"


class JoiningBundle(models.Model):
    bundle_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    follower_address = models.CharField(max_length=253)
    token_hash = models.CharField(max_length=128, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=BundleState.choices, default=BundleState.OUTSTANDING)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    downloaded_at = models.DateTimeField(null=True, blank=True)
    download_count = models.PositiveIntegerField(default=0)
    # The file, already encrypted under the MEK; dropped once the bundle is no longer usable.
    file = models.BinaryField(null=True, blank=True)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"bundle {self.bundle_id} for {self.follower_address}"

    @property
    def ready(self) -> bool:
        return self.file is not None and self.state == BundleState.OUTSTANDING


class ApprovalPolicy(models.Model):
    """The one policy row (pk 1); each request copies it when it is made."""

    SINGLETON_PK = 1

    required_approvals = models.PositiveSmallIntegerField(default=2)
    approver_role = models.CharField(max_length=20, choices=Role.choices, default=Role.APPROVER)
    request_lifetime_hours = models.PositiveIntegerField(default=24)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")


class RequestState(models.TextChoices):
    PENDING = "pending", "Waiting for approvals"
    APPROVED = "approved", "Approved"
    DENIED = "denied", "Denied"
    EXPIRED = "expired", "Expired"
    RUNNING = "joining", "Running"  # the join (or removal) job is under way
    DONE = "joined", "Done"
    FAILED = "failed", "Failed"


OPEN_REQUEST_STATES = (RequestState.PENDING, RequestState.APPROVED, RequestState.RUNNING)


class ApprovalRequestBase(models.Model):
    """What every request that needs M-of-N approvals has."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    requested_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    required_approvals = models.PositiveSmallIntegerField()
    approver_role = models.CharField(max_length=20, choices=Role.choices)
    request_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=RequestState.choices, default=RequestState.PENDING)
    failure_reason = models.TextField(blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    job = models.OneToOneField("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        abstract = True
        ordering = ["-requested_at", "-id"]


class JoinRequest(ApprovalRequestBase):
    KIND = "join"

    bundle = models.OneToOneField(JoiningBundle, on_delete=models.PROTECT, related_name="join_request")
    follower_address = models.CharField(max_length=253)
    follower_version = models.CharField(max_length=32)
    csr_pem = models.TextField()
    preflight_summary = models.JSONField(default=dict, blank=True)
    poll_secret_hash = models.CharField(max_length=64)
    # Where the request came from, for the approvers to compare out of band.
    source_address = models.CharField(max_length=64, blank=True)
    # Filled in by the join steps; the follower's poll returns them once handed over.
    cert_pem = models.TextField(blank=True)
    cert_serial = models.CharField(max_length=64, blank=True)
    etcd_member_id = models.CharField(max_length=24, blank=True)
    etcd_member_name = models.CharField(max_length=253, blank=True)
    etcd_initial_cluster = models.TextField(blank=True)
    ca_pem = models.TextField(blank=True)
    handed_over_at = models.DateTimeField(null=True, blank=True)

    class Meta(ApprovalRequestBase.Meta):
        pass

    def __str__(self) -> str:
        return f"join of {self.follower_address}"

    @property
    def requester(self):
        return self.bundle.created_by


class RemovalRequest(ApprovalRequestBase):
    KIND = "removal"

    member = models.ForeignKey(ClusterMember, on_delete=models.PROTECT, related_name="removal_requests")
    address = models.CharField(max_length=253)
    etcd_member_id = models.CharField(max_length=24, blank=True)
    reason = models.CharField(max_length=500)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    # Telling the removed node (its delegation API, 2391) once the removal is done;
    # retried by the heartbeat task until it answers.
    node_notified_at = models.DateTimeField(null=True, blank=True)
    node_notice_attempts = models.PositiveIntegerField(default=0)
    node_notice_detail = models.CharField(max_length=500, blank=True)

    class Meta(ApprovalRequestBase.Meta):
        pass

    def __str__(self) -> str:
        return f"removal of {self.address}"

    @property
    def requester(self):
        return self.requested_by


class LeadershipRequest(ApprovalRequestBase):
    """"Set cluster leader": make ``member`` the Patroni primary (a switchover, or a
    failover when the leader's Patroni cannot be reached), once approved."""

    KIND = "leadership"

    member = models.ForeignKey(ClusterMember, on_delete=models.PROTECT, related_name="leadership_requests")
    address = models.CharField(max_length=253)
    candidate = models.CharField(max_length=63, help_text="the member's name in Patroni")
    reason = models.CharField(max_length=500)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    # What the requester's page saw (Patroni's /cluster): who led, and how far behind the
    # candidate was — what a failover could lose. Shown to the approvers, not hashed.
    leader_seen = models.CharField(max_length=63, blank=True)
    lag_seen = models.BigIntegerField(null=True, blank=True, help_text="bytes behind the leader, when Patroni said")
    # Filled in by the job.
    method = models.CharField(max_length=16, blank=True)  # switchover, failover, or none (already leading)
    previous_leader = models.CharField(max_length=63, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    outcome_detail = models.CharField(max_length=1000, blank=True)

    class Meta(ApprovalRequestBase.Meta):
        pass

    def __str__(self) -> str:
        return f"leadership to {self.address}"

    @property
    def requester(self):
        return self.requested_by


class Decision(models.TextChoices):
    APPROVE = "approve", "Approve"
    DENY = "deny", "Deny"


class Approval(models.Model):
    """One approver's vote on one join, removal or leadership request."""

    join_request = models.ForeignKey(JoinRequest, null=True, blank=True, on_delete=models.CASCADE,
                                     related_name="votes")
    removal_request = models.ForeignKey(RemovalRequest, null=True, blank=True, on_delete=models.CASCADE,
                                        related_name="votes")
    leadership_request = models.ForeignKey(LeadershipRequest, null=True, blank=True, on_delete=models.CASCADE,
                                           related_name="votes")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    request_hash = models.CharField(max_length=64)
    voted_at = models.DateTimeField()

    class Meta:
        ordering = ["voted_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["join_request", "approver"], name="cluster_one_vote_per_join_approver"),
            models.UniqueConstraint(fields=["removal_request", "approver"],
                                    name="cluster_one_vote_per_removal_approver"),
            models.UniqueConstraint(fields=["leadership_request", "approver"],
                                    name="cluster_one_vote_per_leadership_approver"),
            models.CheckConstraint(
                condition=(models.Q(join_request__isnull=False, removal_request__isnull=True,
                                    leadership_request__isnull=True)
                           | models.Q(join_request__isnull=True, removal_request__isnull=False,
                                      leadership_request__isnull=True)
                           | models.Q(join_request__isnull=True, removal_request__isnull=True,
                                      leadership_request__isnull=False)),
                name="cluster_vote_on_one_request",
            ),
        ]


class RevokedCertificate(models.Model):
    serial = models.CharField(max_length=64, unique=True)
    address = models.CharField(max_length=253, blank=True)
    reason = models.CharField(max_length=500)
    revoked_at = models.DateTimeField()

    class Meta:
        ordering = ["-revoked_at"]


from .follower_models import FollowerJoin, JoinState, NodeRemoval  # noqa: E402,F401  the follower's half
