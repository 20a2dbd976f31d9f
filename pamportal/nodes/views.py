"""The node's dashboard and its actions."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.jobs.selectors import job_progress
from pamportal.licensing.selectors import licence_status_for

from . import keys, selectors, services
from .forms import MekForm


@require_capability("node.view")
@require_GET
def dashboard(request):
    facts = selectors.node_facts_overview()
    latest, running = facts.latest, facts.running
    this_node = selectors.node_current()
    finalised = this_node.finalised_at is not None
    licence_status = licence_status_for(request) if finalised else None
    context = {
        "node": {
            "address": selectors.node_address(this_node),
            "role": this_node.role,
            "role_display": this_node.get_role_display(),
            "version": settings.PAM_VERSION,
            "finalised_at": this_node.finalised_at,
            "ntp_servers": this_node.ntp_servers,
        },
        "setup_due": selectors.node_setup_due(this_node),
        "finalised": finalised,
        "certificates": selectors.certificates_current() if finalised else [],
        "licence_status": licence_status,
        "licence": licence_status.licence if licence_status is not None else None,
        "latest": latest,
        "facts": latest.facts if latest else None,
        "failure": facts.failure,
        "job": running,
        "progress": job_progress(running) if running else None,
        "refresh_on_finish": True,
    }
    return render(request, "nodes/dashboard.html", context)


@require_capability("jobs.run")
@require_POST
def collect_facts(request):
    job, created = services.node_facts_collect(user=request.user)
    if created:
        messages.success(request, f"Collecting node facts (job #{job.pk}).")
    else:
        messages.info(request, f"Node facts are already being collected (job #{job.pk}).")
    return redirect("nodes:dashboard")


@require_capability("certificates.view")
@require_GET
def certificates(request):
    return render(
        request,
        "nodes/certificates.html",
        {"certificates": selectors.certificates_current(), "finalised": selectors.node_is_finalised()},
    )


@sensitive_post_parameters("mek")
@sensitive_variables()
@never_cache
@require_capability("mek.check")
@require_http_methods(["GET", "POST"])
def mek_check(request):
    result = None
    status = 200
    if request.method == "POST":
        # Every attempt, even an empty or overlong one, goes to the service and its audit.
        typed = request.POST.get("mek", "")[: MekForm.base_fields["mek"].max_length]
        result = keys.mek_check(user=request.user, typed=typed)
        status = 200 if result.ok else 400
    # Always a fresh form: the typed key is never sent back.
    response = render(request, "nodes/mek_check.html", {"form": MekForm(), "result": result}, status=status)
    response["Cache-Control"] = "no-store"
    return response
