"""Reading preflight runs: history, one run's outcomes, and what still blocks."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import CheckOutcome, PreflightRun
from .services import summary_of


def preflight_run_list() -> QuerySet[PreflightRun]:
    return PreflightRun.objects.select_related("job", "created_by").order_by("-created_at", "-id")


def preflight_latest() -> PreflightRun | None:
    """The most recent run (finished or not), or None before the first."""
    return preflight_run_list().first()


def preflight_outcomes(run: PreflightRun) -> list[CheckOutcome]:
    return list(
        CheckOutcome.objects.filter(run=run).select_related("acceptance", "acceptance__user").order_by("position")
    )


def preflight_blocking(run: PreflightRun) -> list[CheckOutcome]:
    """What stops the next step: failing errors, failing warnings not accepted, and any
    check that has not run yet. Empty: the node may go on."""
    return [outcome for outcome in preflight_outcomes(run) if outcome.blocking]


def preflight_results_context(run: PreflightRun, *, return_to: str = "") -> dict:
    """What ``preflight/_results.html`` needs, for a page that shows a run's results
    (the setup wizard's preflight step)."""
    outcomes = preflight_outcomes(run)
    return {
        "run": run,
        "job": run.job,
        "outcomes": outcomes,
        "blocking": [o for o in outcomes if o.blocking],
        "summary": summary_of(outcomes),
        "return_to": return_to or "",
    }
