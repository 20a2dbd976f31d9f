"""What the wizard asks of the preflight and licensing apps, in one place."""

from __future__ import annotations

from pamportal.jobs.choices import TERMINAL

# Before the licence step there is no licence to check; the finalise step needs one.
SKIP_BEFORE_LICENCE = ("licence.valid",)


# --- preflight ---------------------------------------------------------------------------
def preflight_run_start(*, user, address: str, ntp_servers: list[str]):
    from pamportal.preflight import conf
    from pamportal.preflight.services import preflight_run_start as start

    context = conf.context_default(address=address, ntp_servers=list(ntp_servers))
    return start(user=user, context=context, skip=SKIP_BEFORE_LICENCE)


def preflight_run(run_id: int | None):
    """The run the wizard started, or None."""
    from pamportal.preflight.models import PreflightRun

    if run_id is None:
        return None
    return PreflightRun.objects.select_related("job").filter(pk=run_id).first()


def preflight_blocking(run) -> list:
    from pamportal.preflight.selectors import preflight_blocking as blocking

    return list(blocking(run))


def preflight_finished(run) -> bool:
    return run.job.status in TERMINAL


def preflight_results_context(request, run, *, return_to: str) -> dict:
    from pamportal.preflight.views import results_context

    return results_context(request, run, return_to=return_to)


# --- licensing ---------------------------------------------------------------------------
def licence_upload_from_request(request):
    """(licence, None) once installed, or (None, the licensing app's message)."""
    from pamportal.licensing.views import licence_upload_from_request as upload

    return upload(request)


def licence_current():
    from pamportal.licensing.selectors import licence_current as current

    return current()


def licence_status():
    from pamportal.licensing.selectors import licence_status as status

    return status()
