"""The Celery application. Tasks stay thin: they fetch by id and call a service."""

import os

from celery import Celery
from django.conf import settings

# The worker and beat write the database, logs and `celerybeat-schedule.*`:
# owner-only, however the worker was started.
os.umask(0o077)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamportal.settings")

app = Celery("pamportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_periodic(sender, **kwargs):
    sender.add_periodic_task(
        settings.PAM_JOB_REAPER_INTERVAL, sender.signature(
            "pamportal.jobs.tasks.reap_expired_leases",
            # A reap that waited longer than one interval is superseded by the next.
            expires=settings.PAM_JOB_REAPER_INTERVAL,
        ),
        name="reap expired job leases",
    )
    # Audit reports: a signed checkpoint every hour (also when no event came), and
    # SIEM forwarding from its durable cursor (a no-op until a collector is enabled).
    # local import: pamportal/__init__ loads this module before Django's apps are ready (audit.conf reaches models)
    from pamportal.audit import conf as audit_conf

    sender.add_periodic_task(
        audit_conf.checkpoint_interval(),
        sender.signature("pamportal.audit.tasks.checkpoint", expires=audit_conf.checkpoint_interval()),
        name="sign an audit checkpoint",
    )
    sender.add_periodic_task(
        audit_conf.siem_interval(),
        sender.signature("pamportal.audit.tasks.siem_forward", expires=audit_conf.siem_interval()),
        name="forward audit events to the SIEM",
    )
    # Counts of repeated anonymous refusals reach the trail once their window is over.
    sender.add_periodic_task(
        float(audit_conf.repeat_window()),
        sender.signature("pamportal.audit.tasks.repeats_flush", expires=float(audit_conf.repeat_window())),
        name="record counted audit repeats",
    )
    # Cluster: expire bundles and requests, undo joins a dead worker left behind; and
    # each member's heartbeat over the delegation API.
    sender.add_periodic_task(60.0, sender.signature("pamportal.cluster.tasks.housekeeping", expires=60.0),
                             name="cluster housekeeping")
    sender.add_periodic_task(30.0, sender.signature("pamportal.cluster.tasks.heartbeats", expires=30.0),
                             name="cluster heartbeats")
    # The PAM leader is Patroni's leader: a failover or switchover is recorded within seconds.
    sender.add_periodic_task(
        settings.PAM_LEADER_FOLLOW_SECONDS,
        sender.signature("pamportal.cluster.tasks.leader_follow", expires=settings.PAM_LEADER_FOLLOW_SECONDS),
        name="cluster leader follows Patroni",
    )
    # Backups: the leader takes one every PAM_BACKUP_INTERVAL_SECONDS (0: none). The task
    # asks every few minutes whether one is due (the last one's start is in the database),
    # so a restarted beat or a new leader neither skips a backup nor takes an extra one.
    if settings.PAM_BACKUP_INTERVAL_SECONDS > 0:
        every = float(min(settings.PAM_BACKUP_INTERVAL_SECONDS, BACKUP_CHECK_SECONDS))
        sender.add_periodic_task(
            every, sender.signature("pamportal.backups.tasks.scheduled_backup", expires=every),
            name="scheduled backup",
        )


# How often the beat asks whether a scheduled backup is due.
BACKUP_CHECK_SECONDS = 300
