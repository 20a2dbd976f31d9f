"""Job pages: the list, one job with live progress, and run again / cancel."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.audit.actions import AuditAction
from pamportal.core.htmx import htmx_partial, stop_polling

from . import selectors, services


def _job(request, pk: int):
    """The job if this user may see it; a missing and a forbidden job are both 404."""
    try:
        return selectors.access_job_by_id(request.user, pk)
    except selectors.JobNotFound:
        raise Http404(f"no job #{pk}") from None


@require_capability("jobs.view")
@require_GET
def job_list(request):
    page = Paginator(selectors.job_list(user=request.user), 50).get_page(request.GET.get("page"))
    return render(request, "jobs/list.html", {"page": page})


@require_capability("jobs.view")
@require_GET
def job_detail(request, pk: int):
    job = _job(request, pk)
    return render(request, "jobs/detail.html", {"job": job, "progress": selectors.job_progress(job)})


@require_capability("jobs.view")
@require_GET
def job_progress(request, pk: int):
    """The progress partial that pages poll; 286 (stop polling) once the job is over."""
    job = _job(request, pk)
    refresh = request.GET.get("refresh") == "1"
    context = {"job": job, "progress": selectors.job_progress(job), "refresh_on_finish": refresh}
    response = render(request, "jobs/_progress.html", context)
    if not job.is_terminal:
        return response
    response = stop_polling(response)
    if refresh and htmx_partial(request):
        response["HX-Refresh"] = "true"  # the embedding page (the dashboard) shows the result
    return response


def _refused(action):
    """The answer to a user whose role may not run jobs: 403, recorded against the job
    with the reason (instead of the generic refused-page event)."""

    def respond(request, pk: int):
        services.job_refusal_record(
            action=action, job_id=pk, reason=f"role {request.user.role} lacks the capability jobs.run"
        )
        return render(request, "core/403.html", status=403)

    return respond


def _job_action(request, pk: int, service, *, verb: str, done: str):
    """Run again or cancel: the service, then the job's page saying how it went."""
    job = _job(request, pk)
    try:
        service(job_id=job.pk, user=request.user)
    except services.JobRefused as exc:
        messages.error(request, f"This job cannot be {verb}: {exc}.")
    else:
        messages.success(request, f"Job #{job.pk} is {done}.")
    return redirect("jobs:detail", pk=job.pk)


@require_capability("jobs.run", on_refused=_refused(AuditAction.JOB_RERUN))
@require_POST
def job_rerun(request, pk: int):
    return _job_action(request, pk, services.job_rerun, verb="run again", done="queued to run again")


@require_capability("jobs.run", on_refused=_refused(AuditAction.JOB_CANCELLED))
@require_POST
def job_cancel(request, pk: int):
    return _job_action(request, pk, services.job_cancel, verb="cancelled", done="cancelled")
