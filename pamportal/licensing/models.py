"""Installed licences, kept as history: the current licence is the newest one not
replaced. The file itself is kept byte for byte, so it can be verified again."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Licence(models.Model):
    licence_id = models.CharField(max_length=64, db_index=True)
    customer = models.CharField(max_length=200)
    edition = models.CharField(max_length=64)
    max_nodes = models.PositiveIntegerField()
    features = models.JSONField(default=list)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    key_id = models.CharField(max_length=64)
    raw = models.BinaryField()  # the file as uploaded
    sha256 = models.CharField(max_length=64)
    installed_at = models.DateTimeField(db_index=True)
    installed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept apart from the foreign key so the history still names who installed it.
    installed_by_name = models.CharField(max_length=150, blank=True)
    replaced_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-installed_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.licence_id} ({self.customer}, {self.edition})"

    @property
    def is_current(self) -> bool:
        return self.replaced_at is None
