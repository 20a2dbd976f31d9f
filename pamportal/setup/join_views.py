"""First boot as a follower: the "join an existing cluster" pages (setup.finalise). The
join itself is ``cluster.follower``'s; these pages parse the form, call it, render."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.cluster import follower
from pamportal.cluster.follower_models import JoinState
from pamportal.cluster.follower_selectors import join_current, join_job
from pamportal.core.htmx import htmx_partial, stop_polling
from pamportal.core.views import refused_redirect
from pamportal.crypto.ca import csr_key_fingerprint
from pamportal.jobs.selectors import job_progress
from pamportal.nodes.selectors import node_is_finalised

from .forms import JoinForm

BUNDLE_MAX_BYTES = 64 * 1024


def _moving(join, request) -> bool:
    """Joined a replicated cluster, and this page still read from the node's own
    database (where alone its join is): the console is about to move onto the
    cluster's, where the cluster's accounts replace this node's. The page keeps polling
    until then; the poll whose session is gone sends it to the login page."""
    from pamportal.cluster.removed import removal_current_for  # read once per request, with the banner

    return bool(join.state == JoinState.JOINED and join.cluster_replicated and removal_current_for(request) is None)


def _context(join, request):
    job = join_job(join)
    context = {"join": join, "JoinState": JoinState, "restartable": join.state in follower.RESTARTABLE_STATES,
               "key_fingerprint": csr_key_fingerprint(join.csr_pem) if join.csr_pem else "",
               "moving": _moving(join, request)}
    if job is not None:
        context.update(job=job, progress=job_progress(job))
    return context


@sensitive_post_parameters("mek")
@sensitive_variables("form")
@never_cache
@require_capability("setup.finalise")
@require_http_methods(["GET", "POST"])
def join_start(request):
    if node_is_finalised():
        return redirect("setup:start")
    join = join_current()
    if join is not None and join.state not in (JoinState.FAILED,):
        return redirect("setup:join_status")
    form = JoinForm(request.POST or None, request.FILES or None, initial={"own_address": request.get_host().rsplit(":", 1)[0]})
    error = ""
    status = 200
    if request.method == "POST" and form.is_valid():
        # One byte past the limit is enough for the parser to refuse (and audit) a file
        # that is too large, without reading the rest of it.
        data = form.cleaned_data["bundle"].read(BUNDLE_MAX_BYTES + 1)
        try:
            follower.join_bundle_open(user=request.user, data=data, mek_text=form.cleaned_data["mek"],
                                      own_address=form.cleaned_data["own_address"])
        except follower.JoinRefused as refused:
            error, status = refused.message, 400
        else:
            messages.success(request, "The bundle opened with this MEK. Next: check the way to the leader.")
            return redirect("setup:join_status")
    elif request.method == "POST":
        status = 400
    # The MEK field is a PasswordInput: Django never renders the typed key back.
    return render(request, "setup/join.html", {"form": form, "error": error}, status=status)


@never_cache
@require_capability("setup.finalise")
@require_GET
def join_status(request):
    join = join_current()
    if join is None:
        return redirect("setup:join")
    partial = htmx_partial(request)
    context = _context(join, request)
    response = render(request, "setup/_join_status.html" if partial else "setup/join_status.html", context)
    if partial and join.state in (JoinState.JOINED, JoinState.FAILED) and not context["moving"]:
        return stop_polling(response)
    return response


@require_POST
@require_capability("setup.finalise")
def join_check(request):
    try:
        join = follower.join_preflight(user=request.user)
    except follower.JoinRefused as refused:
        return refused_redirect(request, refused, "setup:join_status")
    if join.state == JoinState.CHECKED:
        messages.success(request, "Every check against the leader passed.")
    else:
        messages.error(request, "Some checks failed; fix them and check again.")
    return redirect("setup:join_status")


@require_POST
@require_capability("setup.finalise")
def join_send(request):
    try:
        follower.join_request_send(user=request.user)
    except follower.JoinRefused as refused:
        # Nothing was sent (or the leader refused it): another bundle is the way on.
        messages.error(request, f"{refused.message} You can check again, or start again with another bundle.")
        return redirect("setup:join_status")
    messages.success(request, "The leader accepted the join request; it now waits for approvals there.")
    return redirect("setup:join_status")


@require_POST
@require_capability("setup.finalise")
def join_discard(request):
    """Start again with another bundle: the unsent (or ended) join is discarded."""
    try:
        follower.join_discard(user=request.user)
    except follower.JoinRefused as refused:
        return refused_redirect(request, refused, "setup:join_status")
    messages.success(request, "The join is discarded. Open another joining bundle.")
    return redirect("setup:join")
