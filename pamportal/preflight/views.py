"""Preflight pages: history, one run with live results, run, accept a warning."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.core.htmx import stop_polling

from . import selectors, services
from .forms import WarningAcceptForm
from .models import CheckOutcome, PreflightRun


def _safe_next(request, value: str | None) -> str | None:
    if value and url_has_allowed_host_and_scheme(value, allowed_hosts={request.get_host()},
                                                   require_https=request.is_secure()):
        return value
    return None


def results_context(request, run: PreflightRun, *, return_to: str | None = None) -> dict:
    """What ``preflight/_results.html`` needs; other pages (the setup wizard) may use it."""
    outcomes = selectors.preflight_outcomes(run)
    return {
        "run": run,
        "job": run.job,
        "outcomes": outcomes,
        "blocking": [o for o in outcomes if o.blocking],
        "summary": services.summary_of(outcomes),
        "return_to": return_to or "",
    }


@require_capability("preflight.view")
@require_GET
def run_list(request):
    page = Paginator(selectors.preflight_run_list(), 50).get_page(request.GET.get("page"))
    return render(request, "preflight/list.html", {"page": page})


@require_capability("preflight.view")
@require_GET
def run_detail(request, pk: int):
    run = get_object_or_404(PreflightRun.objects.select_related("job", "created_by"), pk=pk)
    return render(request, "preflight/detail.html", results_context(request, run))


@require_capability("preflight.view")
@require_GET
def run_results(request, pk: int):
    """The live partial; 286 (stop polling) once the run's job is over."""
    run = get_object_or_404(PreflightRun.objects.select_related("job"), pk=pk)
    context = results_context(request, run, return_to=_safe_next(request, request.GET.get("next")))
    response = render(request, "preflight/_results.html", context)
    if run.job.is_terminal:
        return stop_polling(response)
    return response


@require_capability("preflight.run")
@require_POST
def run_start(request):
    run = services.preflight_run_start(user=request.user)
    messages.success(request, f"Preflight run #{run.pk} is queued.")
    return redirect("preflight:detail", pk=run.pk)


@require_capability("preflight.accept")
@require_POST
def warning_accept(request, pk: int):
    outcome = get_object_or_404(CheckOutcome.objects.select_related("run"), pk=pk)
    form = WarningAcceptForm(request.POST)
    data = form.cleaned_data if form.is_valid() else {}
    try:
        services.preflight_warning_accept(outcome_id=outcome.pk, user=request.user, reason=data.get("reason", ""))
    except services.PreflightRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Warning {outcome.check_id} accepted.")
    target = _safe_next(request, data.get("next"))
    return redirect(target) if target else redirect("preflight:detail", pk=outcome.run_id)
