"""The wizard's steps after the administrator: the node's address, preflight, the
licence, and finalise (the MEK step is ``nodes.keys``'s). Each service locks this
node's row, checks the step is due, changes it and writes its audit event in the same
transaction; a refusal the operator should see is a ``StepRefused`` with the message."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
from pamportal.cluster import local_etcd
from pamportal.licensing.selectors import licence_status
from pamportal.nodes import keys
from pamportal.nodes import services as node_services
from pamportal.nodes.models import Node, NodeRole
from pamportal.nodes.progress import StepRefused, node_locked, refuse_if_finalised, refuse_unless_due
from pamportal.preflight import conf as preflight_conf
from pamportal.preflight.models import PreflightRun
from pamportal.preflight.selectors import preflight_blocking
from pamportal.preflight.services import preflight_run_start

from .selectors import preflight_finished, setup_preflight_run

# Before the licence step there is no licence to check; the finalise step needs one.
SKIP_BEFORE_LICENCE = ("licence.valid",)


def _node_at(step: str) -> Node:
    """This node's row, locked, for a service of ``step``: refused once the node is
    finalised or while an earlier step is not done."""
    node = node_locked()
    refuse_if_finalised(node)
    refuse_unless_due(node, step)
    return node


@transaction.atomic
def setup_node_set(*, user, address: str, ntp_servers: list[str]) -> Node:
    """Set the node address and NTP servers. A change voids an earlier preflight run."""
    node = node_locked()
    refuse_if_finalised(node)
    changed = node.address != address or list(node.ntp_servers or []) != list(ntp_servers)
    node.address, node.ntp_servers = address, list(ntp_servers)
    if changed:
        node.preflight_run_id = None
        node.preflight_passed_at = None
    node.save()
    audit_record(
        action=AuditAction.SETUP_NODE_SET,
        target=f"node:{address}",
        details={"address": address, "ntp_servers": list(ntp_servers), "changed": changed},
    )
    return node


@transaction.atomic
def setup_preflight_start(*, user) -> PreflightRun:
    """Start a preflight run with this node's address and NTP servers."""
    node = _node_at("preflight")
    context = preflight_conf.context_default(address=node.address, ntp_servers=list(node.ntp_servers))
    run = preflight_run_start(user=user, context=context, skip=SKIP_BEFORE_LICENCE)
    node.preflight_run_id = run.pk
    node.preflight_passed_at = None
    node.save(update_fields=["preflight_run_id", "preflight_passed_at", "updated_at"])
    return run


@transaction.atomic
def setup_preflight_pass(*, user) -> Node:
    """Go on from preflight: the wizard's run has ended with nothing blocking (no error,
    every warning accepted)."""
    node = _node_at("preflight")
    run = setup_preflight_run(node)
    if run is None:
        raise StepRefused("Run preflight first.")
    if not preflight_finished(run):
        raise StepRefused("Preflight is still running; wait for every check to finish.")
    blocking = preflight_blocking(run)
    if blocking:
        raise StepRefused(
            f"Preflight found {len(blocking)} problem(s) that block setup: fix each error and run preflight again, "
            "or accept each warning with a reason on the preflight page."
        )
    node.preflight_passed_at = timezone.now()
    node.save(update_fields=["preflight_passed_at", "updated_at"])
    audit_record(action=AuditAction.SETUP_PREFLIGHT_PASSED, target=f"node:{node.address}", details={"preflight_run": run.pk})
    return node


@transaction.atomic
def setup_licence_done(*, user) -> Node:
    """Go on from the licence step: a valid licence is installed."""
    node = _node_at("licence")
    status = licence_status()
    if not status.ok:
        raise StepRefused(status.message)
    licence = status.licence
    node.licence_done_at = timezone.now()
    node.save(update_fields=["licence_done_at", "updated_at"])
    audit_record(
        action=AuditAction.SETUP_LICENCE_DONE,
        target=f"node:{node.address}",
        details={"licence": licence.licence_id, "customer": licence.customer, "edition": licence.edition},
    )
    return node


@sensitive_variables()
@transaction.atomic
def setup_finalise(*, user) -> Node:
    """Create the cluster CA and this node's certificate (private keys stored only
    sealed with the MEK), write the certificate files the console serves, and mark the
    node a finalised standalone server: one transaction with its audit events."""
    node = _node_at("finalise")
    status = licence_status()
    if not status.ok:
        raise StepRefused(f"{status.message} Go back to the licence step.")
    keys.mek_of_node(node)
    now = timezone.now()
    issued = keys.certificates_create(node=node, now=now)
    node.role = NodeRole.STANDALONE
    node.finalised_at = now
    node.finalised_by = user.get_username() if user is not None else ""
    node.save()
    audit_record(
        action=AuditAction.SETUP_FINALISED, target=f"node:{node.address}",
        details={"role": node.role, "address": node.address, "ntp_servers": node.ntp_servers,
                 "mek": keys.mek_short(node.mek_fingerprint)},
    )
    # Last: a failure writing the files rolls all of the above back.
    node_services.node_tls_files_write(
        cert_pem=issued.node.cert_pem, key_pem=issued.node.key_pem, ca_cert_pem=issued.ca.cert_pem
    )
    # The standalone node runs a one-member etcd (``serve`` starts it from this file),
    # ready to lead a cluster. Without the etcd binary preflight has said how to fix it.
    if local_etcd.etcd_available():
        address = node.address
        transaction.on_commit(lambda: local_etcd.local_member_configure(address=address))
    return node
