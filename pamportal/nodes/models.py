"""This node: its identity, how far its setup has come, and its certificates.

The database never holds the MEK or a private key in the clear: ``Node`` keeps the
MEK's fingerprint (an HMAC), ``Certificate`` keeps private keys sealed under keys
derived from the MEK.
"""

from django.db import models


class NodeRole(models.TextChoices):
    STANDALONE = "standalone", "Standalone server"
    LEADER = "leader", "Cluster leader"
    FOLLOWER = "follower", "Cluster follower"


class Node(models.Model):
    """The one row describing this node (pk 1). The first-boot wizard fills it in step
    by step, so a refresh or a later visit resumes where the operator was."""

    SINGLETON_PK = 1

    address = models.CharField(max_length=253, blank=True)
    ntp_servers = models.JSONField(default=list, blank=True)
    role = models.CharField(max_length=16, choices=NodeRole.choices, default=NodeRole.STANDALONE)
    # Wizard progress.
    preflight_run_id = models.BigIntegerField(null=True, blank=True)
    preflight_passed_at = models.DateTimeField(null=True, blank=True)
    licence_done_at = models.DateTimeField(null=True, blank=True)
    mek_fingerprint = models.CharField(max_length=64, blank=True)
    mek_generated_at = models.DateTimeField(null=True, blank=True)
    mek_shown_at = models.DateTimeField(null=True, blank=True)
    mek_downloaded_at = models.DateTimeField(null=True, blank=True)
    mek_confirmed_at = models.DateTimeField(null=True, blank=True)
    finalised_at = models.DateTimeField(null=True, blank=True)
    finalised_by = models.CharField(max_length=150, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"node {self.address or '(no address yet)'}"

    @property
    def finalised(self) -> bool:
        return self.finalised_at is not None


class CertificateKind(models.TextChoices):
    CLUSTER_CA = "cluster-ca", "Cluster CA"
    NODE_TLS = "node-tls", "Node certificate"


# The purpose each kind's private key is sealed under (HKDF info): a sealed key cannot
# be moved to another use.
SEAL_PURPOSE = {CertificateKind.CLUSTER_CA: "cluster-ca-key", CertificateKind.NODE_TLS: "node-tls-key"}


class Certificate(models.Model):
    kind = models.CharField(max_length=16, choices=CertificateKind.choices)
    subject = models.CharField(max_length=512)
    names = models.JSONField(default=list, blank=True)
    serial = models.CharField(max_length=64)
    sha256 = models.CharField(max_length=64)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    cert_pem = models.TextField()
    sealed_key = models.TextField(help_text="PKCS#8 private key sealed with the MEK (AES-256-GCM, HKDF)")
    created_at = models.DateTimeField()
    # A replaced certificate keeps its row (history) with this set.
    replaced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["kind", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(replaced_at__isnull=True), name="one_current_certificate_per_kind"
            )
        ]

    def __str__(self):
        return f"{self.get_kind_display()} {self.subject}"
