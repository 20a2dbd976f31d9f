"""Every URL × every method its view accepts × every role (and anonymous) gets the
expected answer.

A new URL, or a method a view starts to accept, without a row here fails
``test_matrix_covers_every_url_and_method``, so no view can be added (or opened to
another method) without deciding who may use it. Each row builds its world once and
asks it as every role, each role inside a savepoint rolled back afterwards, so one
role's request never changes what the next one sees.
"""

from __future__ import annotations

import uuid

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.exports import audit_export_create, audit_export_run
from pamportal.audit.services import audit_record
from pamportal.jobs.choices import Status
from pamportal.jobs.services import job_create
from pamportal.nodes.facts import KIND as FACTS_KIND
from pamportal.preflight.models import CheckOutcome, PreflightRun

ANON, VIEWER, OPERATOR, APPROVER, ADMIN, AUDITOR = (
    "anonymous", "viewer", "operator", "approver", "administrator", "auditor"
)
ROLES = (ANON, VIEWER, OPERATOR, APPROVER, ADMIN, AUDITOR)


def everyone(code):
    return dict.fromkeys(ROLES, code)


def signed_in(code, anonymous=302):
    return {role: (anonymous if role == ANON else code) for role in ROLES}


def only(allowed: set[str], ok: int, *, denied: int = 403):
    return {role: (302 if role == ANON else ok if role in allowed else denied) for role in ROLES}


RUNNERS = {OPERATOR, ADMIN}
AUDITORS = {ADMIN, AUDITOR}

# (url name, method, kwargs kind) -> expected status per role
MATRIX: dict[tuple[str, str], dict[str, int]] = {
    ("healthz", "GET"): everyone(200),
    ("healthz", "POST"): everyone(405),
    ("nodes:dashboard", "GET"): signed_in(200),
    ("nodes:collect_facts", "POST"): only(RUNNERS, 302),
    ("nodes:collect_facts", "GET"): only(RUNNERS, 405),
    # The first administrator exists but the node is not finalised: administrators are
    # led on through the wizard; everyone else is told that setup is in hand.
    ("setup:start", "GET"): {**everyone(200), ADMIN: 302},
    ("setup:start", "POST"): everyone(405),
    ("setup:token", "GET"): everyone(302),
    ("setup:token", "POST"): everyone(403),
    ("setup:administrator", "GET"): everyone(302),
    ("setup:administrator", "POST"): everyone(302),
    ("setup:totp", "GET"): everyone(302),
    ("setup:totp", "POST"): everyone(302),
    ("setup:node", "GET"): only({ADMIN}, 200),
    ("setup:node", "POST"): only({ADMIN}, 200),
    ("setup:preflight", "GET"): only({ADMIN}, 302),
    ("setup:preflight_start", "POST"): only({ADMIN}, 302),
    ("setup:preflight_start", "GET"): everyone(405),
    ("setup:preflight_next", "POST"): only({ADMIN}, 302),
    ("setup:licence", "GET"): only({ADMIN}, 302),
    ("setup:licence", "POST"): only({ADMIN}, 302),
    ("setup:licence_next", "POST"): only({ADMIN}, 302),
    ("setup:mek", "GET"): only({ADMIN}, 302),
    ("setup:mek_generate", "POST"): only({ADMIN}, 302),
    ("setup:mek_download", "POST"): only({ADMIN}, 302),
    ("setup:mek_download", "GET"): everyone(405),
    ("setup:mek_confirm", "POST"): only({ADMIN}, 302),
    ("setup:mek_discard", "POST"): only({ADMIN}, 302),
    ("setup:finalise", "GET"): only({ADMIN}, 302),
    ("setup:finalise", "POST"): only({ADMIN}, 302),
    ("nodes:certificates", "GET"): signed_in(200),
    ("nodes:mek_check", "GET"): only({ADMIN}, 200),
    ("nodes:mek_check", "POST"): only({ADMIN}, 400),
    ("accounts:login", "GET"): {**signed_in(302), ANON: 200},
    ("accounts:login", "POST"): everyone(200),  # empty form: shown again, signed in or not
    ("accounts:logout", "POST"): everyone(302),
    ("accounts:logout", "GET"): everyone(405),
    ("accounts:totp_enrol", "GET"): signed_in(200),
    ("accounts:totp_enrol", "POST"): signed_in(200),
    ("accounts:password_change", "GET"): signed_in(200),
    ("accounts:password_change", "POST"): signed_in(200),
    ("accounts:user_list", "GET"): only({ADMIN}, 200),
    ("accounts:user_list", "POST"): only({ADMIN}, 405),
    ("accounts:user_create", "GET"): only({ADMIN}, 200),
    ("accounts:user_create", "POST"): only({ADMIN}, 200),  # empty form: shown again with its errors
    ("accounts:user_disable", "POST"): only({ADMIN}, 302),
    ("accounts:user_enable", "POST"): only({ADMIN}, 302),
    ("accounts:user_reset", "POST"): only({ADMIN}, 200),
    ("accounts:user_unlock", "POST"): only({ADMIN}, 302),
    # Method checks come first on the user actions: a GET changes nothing for anyone.
    ("accounts:user_disable", "GET"): everyone(405),
    ("audit:list", "GET"): only({ADMIN, AUDITOR}, 200),
    ("audit:detail", "GET"): only({ADMIN, AUDITOR}, 200),
    ("jobs:list", "GET"): signed_in(200),
    ("jobs:detail", "GET"): signed_in(200),
    ("jobs:progress", "GET"): signed_in(200),
    ("jobs:rerun", "POST"): only(RUNNERS, 302),
    ("jobs:cancel", "POST"): only(RUNNERS, 302),
    ("jobs:rerun", "GET"): only(RUNNERS, 405),
    ("preflight:list", "GET"): signed_in(200),
    ("preflight:detail", "GET"): signed_in(200),
    ("preflight:results", "GET"): signed_in(200),
    ("preflight:run", "POST"): only(RUNNERS, 302),
    ("preflight:run", "GET"): only(RUNNERS, 405),
    ("preflight:accept", "POST"): only(RUNNERS, 302),
    ("preflight:accept", "GET"): only(RUNNERS, 405),
    ("audit:export", "POST"): only(AUDITORS, 302),
    ("audit:export", "GET"): everyone(405),
    ("audit:export_detail", "GET"): only(AUDITORS, 200),
    ("audit:export_file", "GET"): only(AUDITORS, 200),
    ("audit:export_manifest", "GET"): only(AUDITORS, 200),
    ("audit:export_verifier", "GET"): only(AUDITORS, 200),
    ("audit:checkpoint", "POST"): only({ADMIN}, 302),
    ("audit:siem", "GET"): only(AUDITORS, 200),
    ("audit:siem", "POST"): only({ADMIN}, 200),  # empty form: shown again with its errors
    ("audit:siem_forward", "POST"): only({ADMIN}, 302),
    # Cluster pages. Ids that do not exist: allowed roles reach the view (404), the
    # others are refused before it.
    ("cluster:overview", "GET"): signed_in(200),
    ("cluster:bundles", "GET"): signed_in(200),
    ("cluster:requests", "GET"): signed_in(200),
    ("cluster:bundle_generate", "POST"): only(RUNNERS, 302),
    ("cluster:bundle_generate", "GET"): only(RUNNERS, 405),
    ("cluster:bundle_download", "POST"): only(RUNNERS, 404),
    ("cluster:bundle_revoke", "POST"): only(RUNNERS, 404),
    ("cluster:vote", "POST"): only({APPROVER}, 302),  # refused with a message: no such request
    ("cluster:policy", "GET"): only({ADMIN}, 200),
    ("cluster:policy", "POST"): only({ADMIN}, 200),
    ("cluster:member_remove", "POST"): only(RUNNERS, 302),  # refused with a message: no such member
    # "Set cluster leader": every role reads the page; operators and administrators ask
    # (refused with a message: no such member), approvers vote (no such request),
    # administrators switch automatic failover (an empty form: sent back with a message).
    ("cluster:leadership", "GET"): signed_in(200),
    ("cluster:leadership_request", "POST"): only(RUNNERS, 302),
    ("cluster:leadership_vote", "POST"): only({APPROVER}, 302),
    ("cluster:failover_mode", "POST"): only({ADMIN}, 302),
    # This node's removal: not removed, every signed-in role is sent back to the cluster page.
    ("cluster:removed", "GET"): everyone(302),
    ("cluster:removed", "POST"): everyone(302),
    # The cluster APIs (served on 2390/2391 only; no session: the same for everyone).
    ("cluster_api:join", "POST"): everyone(400),
    ("cluster_api:join", "GET"): everyone(405),
    ("cluster_api:join_status", "GET"): everyone(404),
    ("cluster_api:join_replica", "POST"): everyone(400),  # empty body: refused before the join is looked up
    ("cluster_api:time", "GET"): everyone(200),
    ("cluster_api:heartbeat", "GET"): everyone(200),
    ("cluster_api:removed", "POST"): everyone(401),  # no client certificate
    ("cluster_api:removed", "GET"): everyone(405),
    # Joining a cluster as a follower (first boot, administrators).
    ("setup:join", "GET"): only({ADMIN}, 200),
    ("setup:join", "POST"): only({ADMIN}, 400),
    ("setup:join_status", "GET"): only({ADMIN}, 302),
    ("setup:join_status", "POST"): only({ADMIN}, 405),
    ("setup:join_check", "POST"): only({ADMIN}, 302),
    ("setup:join_send", "POST"): only({ADMIN}, 302),
    ("setup:join_discard", "POST"): only({ADMIN}, 302),
    ("licensing:detail", "GET"): signed_in(200),
    ("licensing:detail", "POST"): everyone(405),
    ("licensing:upload", "GET"): only({ADMIN}, 200),
    ("licensing:upload", "POST"): only({ADMIN}, 400),  # empty POST: "Choose the licence file to upload."
    # Backups: operators see the page and start one (refused with a message here: the
    # node is not finalised); only administrators download (a backup that does not exist: 404).
    ("backups:list", "GET"): only(RUNNERS, 200),
    ("backups:start", "POST"): only(RUNNERS, 302),
    ("backups:start", "GET"): only(RUNNERS, 405),
    ("backups:download", "POST"): only({ADMIN}, 404),
    ("backups:download", "GET"): only({ADMIN}, 405),
}


# What a view without a method decorator is asked with: it answers every method, so a
# form posted to it must be decided on as much as the page it shows.
UNRESTRICTED = frozenset({"GET", "POST"})


def _accepted_methods(view) -> frozenset[str]:
    """The methods the view's ``require_http_methods`` (``require_POST``, ``require_GET``,
    ...) lets through, HEAD and OPTIONS aside; ``UNRESTRICTED`` when it has none."""
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        return frozenset(m.upper() for m in view_class.http_method_names
                         if hasattr(view_class, m) and m not in ("head", "options"))
    func = view
    while func is not None:
        # Django's decorator keeps the list in the closure of the wrapper it returns.
        code = getattr(func, "__code__", None)
        if code is not None and "request_method_list" in code.co_freevars:
            allowed = func.__closure__[code.co_freevars.index("request_method_list")].cell_contents
            return frozenset(allowed) - {"HEAD", "OPTIONS"}
        func = getattr(func, "__wrapped__", None)
    return UNRESTRICTED


def _url_methods() -> dict[str, frozenset[str]]:
    """Every named URL in the URLconf and the methods its view accepts."""
    found: dict[str, frozenset[str]] = {}

    def walk(resolver: URLResolver, namespace: str = ""):
        for pattern in resolver.url_patterns:
            if isinstance(pattern, URLResolver):
                ns = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern, ns)
            elif isinstance(pattern, URLPattern) and pattern.name:
                found[namespace + pattern.name] = _accepted_methods(pattern.callback)

    walk(get_resolver())
    return found


def test_matrix_covers_every_url_and_method():
    accepted = {(name, method) for name, methods in _url_methods().items() for method in methods}
    assert accepted - set(MATRIX) == set(), "add these (URL, method) pairs to the role matrix"
    assert {name for name, _ in MATRIX} - set(_url_methods()) == set(), "the matrix names URLs that do not exist"


def test_method_reading_sees_the_decorators():
    # The coverage test is only as good as this: a POST-only view reads as POST only, a
    # form view as GET and POST, a view without a method decorator as unrestricted.
    methods = _url_methods()
    assert methods["accounts:user_disable"] == {"POST"}
    assert methods["accounts:user_create"] == {"GET", "POST"}
    assert methods["audit:list"] == {"GET"}
    assert methods["healthz"] == {"GET"}  # HEAD aside
    assert _accepted_methods(lambda request: None) == UNRESTRICTED


def test_refused_method_rows_name_methods_the_view_refuses():
    # Rows beyond the accepted methods are there to pin the refusal of a method.
    methods = _url_methods()
    for (name, method), expected in MATRIX.items():
        if method not in methods[name]:
            assert 405 in expected.values(), f"{method} {name}: a refused method answers 405 to someone"


@pytest.fixture
def world(make_user, settings, tmp_path):
    settings.PAM_DATA_DIR = tmp_path  # exports are written under the data dir
    users = {
        VIEWER: make_user("matrix-viewer", Role.VIEWER),
        OPERATOR: make_user("matrix-operator", Role.OPERATOR),
        APPROVER: make_user("matrix-approver", Role.APPROVER),
        ADMIN: make_user("matrix-admin", Role.ADMINISTRATOR),
        AUDITOR: make_user("matrix-auditor", Role.AUDITOR),
    }
    target = make_user("matrix-target", Role.VIEWER)
    audit_record(action=AuditAction.USER_CREATED, target="user:matrix-target")
    failed_job = job_create(kind=FACTS_KIND, enqueue=False)
    failed_job.status = Status.FAILED  # a finished job for "run again"
    failed_job.save(update_fields=["status"])
    pending_job = job_create(kind=FACTS_KIND, enqueue=False)
    run = PreflightRun.objects.create(job=job_create(kind="preflight", enqueue=False), created_by=users[OPERATOR])
    warning = CheckOutcome.objects.create(
        run=run, position=1, check_id="hardware.cpu", title="CPU count", severity="warning",
        can_accept=True, status="fail", measured="2", threshold=">= 4",
    )
    export = audit_export_run(export_id=audit_export_create(user=users[ADMIN], format="csv", filters={}).pk)
    return {
        "export": export,
        "users": users, "target": target, "failed_job": failed_job, "pending_job": pending_job,
        "preflight_run": run, "warning": warning,
    }


def _kwargs(name: str, world) -> dict:
    if name.startswith("accounts:user_") and name not in ("accounts:user_list", "accounts:user_create"):
        return {"user_id": world["target"].pk}
    if name == "audit:detail":
        return {"position": 1}
    if name in ("audit:export_detail", "audit:export_file", "audit:export_manifest"):
        return {"export_id": world["export"].pk}
    if name in ("cluster:bundle_download", "cluster:bundle_revoke"):
        return {"bundle_id": uuid.UUID(int=1)}
    if name == "cluster:vote":
        return {"kind": "join", "pk": 999999}
    if name in ("cluster:member_remove", "cluster:leadership_request", "cluster:leadership_vote"):
        return {"pk": 999999}
    if name in ("cluster_api:join_status", "cluster_api:join_replica"):
        return {"request_id": uuid.UUID(int=2)}
    if name in ("preflight:detail", "preflight:results"):
        return {"pk": world["preflight_run"].pk}
    if name == "preflight:accept":
        return {"pk": world["warning"].pk}
    if name == "backups:download":
        return {"pk": 999999}
    if name == "jobs:rerun":
        return {"pk": world["failed_job"].pk}
    if name in ("jobs:detail", "jobs:progress", "jobs:cancel"):
        return {"pk": world["pending_job"].pk}
    return {}


DATA = {
    "setup:token": "token=ABCD-EFGH-IJKL",
    "preflight:accept": "reason=Lab node with two cores, accepted for the pilot",
}


@pytest.mark.parametrize("name,method", list(MATRIX), ids=[f"{method} {name}" for name, method in MATRIX])
def test_role_matrix(name, method, world, login_client):
    url = reverse(name, kwargs=_kwargs(name, world))
    answers = {}
    for role in ROLES:
        # Each role in a savepoint rolled back afterwards: a role's request (a user
        # disabled, a key generated) is not seen by the next role.
        savepoint = transaction.savepoint()
        try:
            client = Client()
            if role != ANON:
                login_client(world["users"][role], client)
            response = client.generic(method, url, DATA.get(name, ""),
                                      content_type="application/x-www-form-urlencoded", secure=True)
            answers[role] = response.status_code
        finally:
            transaction.savepoint_rollback(savepoint)
    expected = MATRIX[(name, method)]
    wrong = {role: f"{answers[role]} (expected {expected[role]})" for role in ROLES if answers[role] != expected[role]}
    assert wrong == {}, f"{method} {url}"


def test_refusals_are_audited(world, client, login_client):
    from pamportal.audit.models import AuditEvent

    login_client(world["users"][VIEWER])
    client.get(reverse("audit:list"), secure=True)
    event = AuditEvent.objects.filter(action=AuditAction.ACCESS_DENIED).latest("position")
    assert event.target == reverse("audit:list")
    assert event.actor_name == "matrix-viewer"
    assert event.outcome == "denied"
