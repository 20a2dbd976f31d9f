"""Cluster pages: the cluster, joining bundles, requests and votes, the approval policy,
and on a node removed from its cluster, the removal and the wipe of its cluster state."""

from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.accounts.roles import has_capability
from pamportal.core.htmx import htmx_partial, stop_polling
from pamportal.core.views import refused_redirect

from . import leadership as leadership_services
from . import removed as removed_state
from . import selectors
from .bundles import bundle_download as bundle_download_service
from .bundles import bundle_generate as bundle_generate_service
from .bundles import bundle_revoke as bundle_revoke_service
from .forms import BundleForm, FailoverModeForm, LeadershipForm, PolicyForm, RemovalForm, VoteForm, WipeForm
from .policy import policy_update
from .refusals import ClusterRefused
from .removal import removal_offer, removal_request_create
from .requests import join_request_vote, leadership_request_vote, removal_request_vote


def leader_only(view):
    """Bundles, requests, votes, removals and the policy live on the leader. Until the
    cluster is replicated a follower knows none of them: it sends the operator to the
    cluster page, which says where to manage the cluster. On the replicated cluster's
    shared database every member's console manages it (``NodeStanding.manages_cluster``)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        standing = selectors.node_standing()
        if not standing.manages_cluster:
            messages.info(request, f"This node is a follower of {standing.leader_address or 'the cluster leader'}; "
                                   f"manage the cluster there.")
            return redirect("cluster:overview")
        return view(request, *args, **kwargs)

    return wrapper


def _removed_page(request, removal, form=None, status: int = 200):
    return render(request, "cluster/removed.html", {
        "removal": removal, "form": form or WipeForm(),
        "confirmation": removed_state.wipe_confirmation(removal),
        "may_wipe": has_capability(request.user, "setup.finalise"),
    }, status=status)


@require_capability("cluster.view")
@require_GET
def overview(request):
    removal = removed_state.removal_current_for(request)
    if removal is not None:
        return _removed_page(request, removal)
    standing = selectors.node_standing()
    if not standing.manages_cluster:
        # A replica's console still says who leads the cluster's database (Patroni's view).
        database = standing.database
        return render(request, "cluster/overview.html", {
            "standing": standing, "database": database,
            "failover": leadership_services.failover_mode(database)})
    overview = selectors.cluster_overview()
    removing = selectors.open_removal_member_ids()
    status = selectors.etcd_status()  # the cached read cluster_overview just made
    etcd_members = list(status.members) if status.ok else None
    # (asked only where a change of leader could be offered: a replicated database)
    under_way = bool(overview.database and overview.database.replicated
                     and leadership_services.leadership_under_way())
    for view in overview.members:
        # Each row its own form ids, and "Remove…" only where the quorum guard allows it.
        view.removal_offer = removal_offer(view.member, etcd_members, removing=view.member.pk in removing)
        view.removal_form = RemovalForm(auto_id=f"id_member_{view.member.pk}_%s")
        # "Set cluster leader…" only on a healthy replica, as leadership_request_create decides.
        view.leadership_offer = leadership_services.leadership_offer(view.member, overview.database,
                                                                     under_way=under_way)
        view.leadership_form = LeadershipForm(auto_id=f"id_lead_{view.member.pk}_%s")
    return render(request, "cluster/overview.html", {
        "standing": standing,
        "overview": overview,
        "database": overview.database,
        "removing": removing,
        "failover": leadership_services.failover_mode(overview.database),
    })


@require_capability("cluster.view")
@require_http_methods(["GET", "POST"])
def removed(request):
    """This node's removal, and (administrators) the wipe of its cluster state."""
    removal = removed_state.removal_current_for(request)
    if removal is None:
        messages.info(request, "This node has not been removed from a cluster.")
        return redirect("cluster:overview")
    if request.method == "GET":
        return _removed_page(request, removal)
    if not has_capability(request.user, "setup.finalise"):
        raise PermissionDenied("setup.finalise")
    form = WipeForm(request.POST)
    try:
        removed_state.cluster_state_wipe(user=request.user,
                                         confirmation=form.cleaned_data["confirmation"] if form.is_valid() else "")
    except removed_state.RemovalRefused as refused:
        messages.error(request, refused.message)
        return _removed_page(request, removal, form, status=400)
    messages.success(request, "This node's cluster state is wiped. Set it up as a standalone server, or join a "
                              "cluster with a new joining bundle.")
    return redirect("setup:start")


@require_capability("cluster.view")
@require_GET
@leader_only
def bundles(request):
    rows = list(selectors.bundle_list()[:100])
    polling = selectors.bundles_being_made(rows)
    context = {"bundles": rows, "form": BundleForm(), "polling": polling}
    if htmx_partial(request):
        response = render(request, "cluster/_bundle_list.html", context)
        # Every bundle is made (or its job ended): the list stops asking.
        return response if polling else stop_polling(response)
    return render(request, "cluster/bundles.html", context)


@require_capability("bundles.manage")
@require_POST
@leader_only
def bundle_generate(request):
    form = BundleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter the follower's address.")
        return redirect("cluster:bundles")
    try:
        bundle = bundle_generate_service(user=request.user, follower_address=form.cleaned_data["follower_address"])
    except ClusterRefused as refused:
        return refused_redirect(request, refused, "cluster:bundles")
    messages.success(request, f"A bundle for {bundle.follower_address} is being made; download it from the "
                              f"list once it is ready.")
    return redirect("cluster:bundles")


@require_capability("bundles.manage")
@require_POST
@leader_only
def bundle_download(request, bundle_id):
    selectors.access_bundle_by_id(request.user, bundle_id)
    try:
        file = bundle_download_service(user=request.user, bundle_id=bundle_id)
    except ClusterRefused as refused:
        return refused_redirect(request, refused, "cluster:bundles")
    response = HttpResponse(file.data, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{file.filename}"'
    response["Cache-Control"] = "no-store"
    return response


@require_capability("bundles.manage")
@require_POST
@leader_only
def bundle_revoke(request, bundle_id):
    selectors.access_bundle_by_id(request.user, bundle_id)
    try:
        bundle = bundle_revoke_service(user=request.user, bundle_id=bundle_id)
    except ClusterRefused as refused:
        return refused_redirect(request, refused, "cluster:bundles")
    messages.success(request, f"The bundle for {bundle.follower_address} is revoked.")
    return redirect("cluster:bundles")


@require_capability("cluster.view")
@require_GET
@leader_only
def requests(request):
    views = selectors.request_views(request.user)
    for view in views:
        view.facts = selectors.join_request_facts(view.request) if view.kind == "join" else None
    return render(request, "cluster/requests.html", {
        "views": views, "vote_form": VoteForm(),
        "may_vote": selectors.may_vote(request.user),
        "leadership_open": selectors.leadership_requests_open_count(),
    })


_VOTE_SERVICES = {"join": join_request_vote, "removal": removal_request_vote}


@require_capability("cluster.view")
@require_POST
@leader_only
def vote(request, kind: str, pk: int):
    if kind not in _VOTE_SERVICES or not selectors.may_vote(request.user):
        raise PermissionDenied("joins.vote")
    form = VoteForm(request.POST)
    data = form.cleaned_data if form.is_valid() else {}
    try:
        result = _VOTE_SERVICES[kind](request_id=pk, user=request.user, decision=data.get("decision", ""),
                                      totp_code=data.get("totp_code", ""))
    except ClusterRefused as refused:
        return refused_redirect(request, refused, "cluster:requests")
    messages.success(request, f"Your vote is recorded; the request is {result.get_state_display().lower()}.")
    return redirect("cluster:requests")


@require_capability("cluster.policy")
@require_http_methods(["GET", "POST"])
@leader_only
def policy(request):
    current = selectors.policy_current()
    form = PolicyForm(request.POST or None, initial={
        "required_approvals": current.required_approvals, "approver_role": current.approver_role,
        "request_lifetime_hours": current.request_lifetime_hours})
    if request.method == "POST" and form.is_valid():
        try:
            policy_update(user=request.user, **form.cleaned_data)
        except ClusterRefused as refused:
            messages.error(request, refused.message)
        else:
            messages.success(request, "The approval policy is changed; requests already made keep theirs.")
            return redirect("cluster:policy")
    return render(request, "cluster/policy.html", {"form": form, "policy": current})


@require_capability("cluster.remove")
@require_POST
@leader_only
def member_remove(request, pk: int):
    form = RemovalForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give a reason of at least 10 characters.")
        return redirect("cluster:overview")
    try:
        removal_request_create(user=request.user, member_id=pk, reason=form.cleaned_data["reason"])
    except ClusterRefused as refused:
        return refused_redirect(request, refused, "cluster:requests")
    messages.success(request, "The removal is requested; it needs the approvals of the policy.")
    return redirect("cluster:requests")


# --- "Set cluster leader" and automatic failover ------------------------------------------------
# Not ``leader_only``: the leader may be the node that is gone, and every node's console
# works on the cluster's replicated database; the services check that it is replicated.
def _leadership_page(request, *, status: int = 200):
    database = selectors.node_standing().database
    return render(request, "cluster/leadership.html", {
        "standing": selectors.node_standing(),
        "database": database,
        "failover": leadership_services.failover_mode(database),
        "candidates": leadership_services.leadership_candidates(database),
        "views": leadership_services.leadership_request_views(request.user),
        "vote_form": VoteForm(), "may_vote": selectors.may_vote(request.user),
        "leadership_form": LeadershipForm(), "failover_form": FailoverModeForm(),
    }, status=status)


@require_capability("cluster.view")
@require_GET
def leadership(request):
    return _leadership_page(request)


@require_capability(leadership_services.REQUEST_CAPABILITY)
@require_POST
def leadership_request(request, pk: int):
    form = LeadershipForm(request.POST)
    try:
        leadership_services.leadership_request_create(
            user=request.user, member_id=pk, reason=form.cleaned_data["reason"] if form.is_valid() else "")
    except ClusterRefused as refused:
        return refused_redirect(request, refused, "cluster:leadership")
    messages.success(request, "The change of cluster leader is requested; it needs the approvals of the policy.")
    return redirect("cluster:leadership")


@require_capability("cluster.view")
@require_POST
def leadership_vote(request, pk: int):
    if not selectors.may_vote(request.user):
        raise PermissionDenied("joins.vote")
    form = VoteForm(request.POST)
    data = form.cleaned_data if form.is_valid() else {}
    try:
        result = leadership_request_vote(request_id=pk, user=request.user, decision=data.get("decision", ""),
                                         totp_code=data.get("totp_code", ""))
    except ClusterRefused as refused:
        return refused_redirect(request, refused, "cluster:leadership")
    messages.success(request, f"Your vote is recorded; the request is {result.get_state_display().lower()}.")
    return redirect("cluster:leadership")


@require_capability(leadership_services.FAILOVER_MODE_CAPABILITY)
@require_POST
def failover_mode(request):
    form = FailoverModeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose whether automatic failover is on or off.")
        return redirect("cluster:leadership")
    try:
        automatic = leadership_services.failover_mode_set(user=request.user,
                                                          automatic=form.cleaned_data["automatic"])
    except ClusterRefused as refused:
        return refused_redirect(request, refused, "cluster:leadership")
    messages.success(request, "Automatic failover is on." if automatic else
                     "Automatic failover is off: a new leader is set only through an approved request.")
    return redirect("cluster:leadership")
