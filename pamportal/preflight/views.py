"""Preflight pages: history, one run with live results, run, accept a warning."""

from __future__ import annotations

import re

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.core.htmx import stop_polling

from . import selectors, services
from .checks import PORT_ROLES
from .forms import WarningAcceptForm
from .models import CheckOutcome, PreflightRun


def _safe_next(request, value: str | None) -> str | None:
    if value and url_has_allowed_host_and_scheme(value, allowed_hosts={request.get_host()},
                                                   require_https=request.is_secure()):
        return value
    return None


_PORT_CHECK = re.compile(r"port\.(\d+)\.free")

# What an operator should know about a port besides its role.
PORT_NOTES = {
    "9002": "Reserved for the PAM client-side service: the PAM software listens on it once it is installed, "
            "so nothing else may hold it now.",
}


def outcomes_labelled(run: PreflightRun, outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    """Give each outcome a ``label`` and a ``note`` for display: a port check names the
    port this run really checked (the catalogue's title names the standard one, 443,
    where the console may listen on 8443)."""
    ports = (run.context or {}).get("ports") or {}
    for outcome in outcomes:
        outcome.label, outcome.note = outcome.title, ""
        match = _PORT_CHECK.fullmatch(outcome.check_id)
        if match is None:
            continue
        standard = match.group(1)
        real = str(ports.get(standard, standard))
        outcome.label = f"Port {real} free ({PORT_ROLES.get(standard, 'cluster service')})"
        notes = [PORT_NOTES.get(standard, "")]
        if real != standard:
            notes.append(f"This node uses port {real} where the standard is {standard}.")
        outcome.note = " ".join(note for note in notes if note)
    return outcomes


def preflight_accepted_count(run: PreflightRun) -> int:
    """How many failed warnings of ``run`` were accepted with a reason."""
    return sum(1 for outcome in selectors.preflight_outcomes(run) if outcome.failing and outcome.accepted)


def results_context(request, run: PreflightRun, *, return_to: str | None = None) -> dict:
    """What ``preflight/_results.html`` needs; other pages (the setup wizard) may use it."""
    outcomes = outcomes_labelled(run, selectors.preflight_outcomes(run))
    summary = services.summary_of(outcomes)
    accepted = sum(1 for o in outcomes if o.failing and o.accepted)
    return {
        "run": run,
        "job": run.job,
        "outcomes": outcomes,
        "blocking": [o for o in outcomes if o.blocking],
        "summary": summary,
        "accepted_count": accepted,
        "failed_open": summary.get("fail", 0) - sum(1 for o in outcomes if o.status == "fail" and o.accepted),
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
