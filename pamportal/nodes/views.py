"""The node's dashboard and its actions."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.jobs.selectors import job_progress

from . import selectors, services


@require_capability("node.view")
@require_GET
def dashboard(request):
    latest = selectors.node_facts_latest()
    running = selectors.node_facts_running()
    context = {
        "node": {"address": settings.PAM_NODE_ADDRESS, "role": "standalone", "version": settings.PAM_VERSION},
        "latest": latest,
        "facts": latest.facts if latest else None,
        "failure": selectors.node_facts_last_failure(latest),
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
