"""Audit receivers for what django-axes decides on its own: a lockout.

Logins, failed logins and logouts are recorded by ``services`` where they happen; axes
sends ``user_locked_out`` exactly once for each attempt it refuses, so recording here
gives one event per refused attempt and none twice."""

from axes.signals import user_locked_out
from django.dispatch import receiver

from .services import locked_out_record


@receiver(user_locked_out, dispatch_uid="pamportal.accounts.locked_out")
def record_lockout(sender, request=None, username=None, ip_address=None, **kwargs):
    locked_out_record(username=username or "", ip_address=ip_address or "")
