"""The audit pages: the filtered event list with the chain badge, one event, exports
with their signed manifests, checkpoints and SIEM forwarding."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.accounts.roles import has_capability
from pamportal.core.htmx import htmx_partial
from pamportal.jobs.selectors import job_progress

from . import conf
from .exports import audit_export_create, audit_export_run
from .forms import AuditFilterForm, ExportForm, SiemForm
from .jobs import siem_forward_start
from .models import AuditEvent, AuditExport
from .selectors import (
    audit_event_hash_matches,
    audit_event_neighbours,
    audit_event_page,
    audit_head,
    audit_recent_exports,
    audit_trail_facts,
    audit_trail_read,
)
from .services import audit_checkpoint_request
from .siem import siem_collector, siem_configure

PAGE_SIZE = 50
_CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8", "pdf": "application/pdf"}


@require_GET
@require_capability("audit.view")
def event_list(request):
    form = AuditFilterForm(request.GET or None)
    partial = htmx_partial(request)
    filters = form.filters()
    # The filter form and the pager swap only the table when htmx is there.
    if partial:
        head = audit_head() if not filters else None  # the count of the unfiltered pager
        page = audit_event_page(filters, request.GET.get("page"), per_page=PAGE_SIZE, head=head)
        return render(request, "audit/_table.html", {"form": form, "page": page})
    trail = audit_trail_read()  # read once: the pager and the badge
    page = audit_event_page(filters, request.GET.get("page"), per_page=PAGE_SIZE, head=trail.head)
    context = {"form": form, "page": page}
    context.update(audit_trail_facts(trail=trail))
    context["export_form"] = ExportForm()
    # The recent exports, shown to those who may export: the table's columns only.
    context["exports"] = audit_recent_exports() if has_capability(request.user, "audit.export") else []
    return render(request, "audit/list.html", context)


@require_GET
@require_capability("audit.view")
def event_detail(request, position: int):
    event = get_object_or_404(AuditEvent, position=position)
    before, after = audit_event_neighbours(event)
    try:
        details = json.dumps(json.loads(event.details), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        details = event.details
    return render(
        request,
        "audit/detail.html",
        {
            "event": event,
            "details": details,
            "hash_matches": audit_event_hash_matches(event),
            "before": before,
            "after": after,
        },
    )


# --- exports ----------------------------------------------------------------------------
@require_POST
@require_capability("audit.export")
def export_create(request):
    export_form = ExportForm(request.POST)
    if not export_form.is_valid():
        messages.error(request, "Choose CSV, JSON Lines or PDF.")
        return redirect("audit:list")
    filters = AuditFilterForm(request.POST).filters()
    export = audit_export_create(user=request.user, format=export_form.cleaned_data["format"], filters=filters)
    if export.job_id is None:  # small enough to write now
        try:
            audit_export_run(export_id=export.pk)
        except Exception as exc:  # recorded on the export; the page says what went wrong
            messages.error(request, f"The export failed: {exc}")
    return redirect("audit:export_detail", export_id=export.pk)


def _export(export_id) -> AuditExport:
    return get_object_or_404(AuditExport.objects.select_related("job"), pk=export_id)


@require_GET
@require_capability("audit.export")
def export_detail(request, export_id):
    export = _export(export_id)
    manifest = json.loads(export.manifest) if export.manifest else None
    context = {"export": export, "manifest": manifest, "verifier_name": VERIFIER_NAME,
               "verifier_sha256": verifier_sha256(), **audit_trail_facts()}
    if export.job is not None:
        context["job"] = export.job
        context["progress"] = job_progress(export.job)
    return render(request, "audit/export_detail.html", context)


# The offline verifier handed to an export's recipient: this very module file, which
# the suite keeps byte-identical to tools/verify_audit_export.py.
VERIFIER_NAME = "verify_audit_export.py"
_VERIFIER_PATH = Path(__file__).with_name("offline.py")


@lru_cache(maxsize=1)
def verifier_sha256() -> str:
    return hashlib.sha256(_VERIFIER_PATH.read_bytes()).hexdigest()


@require_GET
@require_capability("audit.export")
def export_verifier(request):
    response = HttpResponse(_VERIFIER_PATH.read_bytes(), content_type="text/x-python; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{VERIFIER_NAME}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _ready_path(export: AuditExport):
    if not export.is_ready or not export.file_name:
        raise Http404("this export is not ready")
    path = conf.export_dir() / export.file_name
    if not path.is_file():
        raise Http404("this export's file is gone")
    return path


@require_GET
@require_capability("audit.export")
def export_file(request, export_id):
    export = _export(export_id)
    path = _ready_path(export)
    response = FileResponse(path.open("rb"), as_attachment=True, filename=export.file_name,
                            content_type=_CONTENT_TYPES[export.format])
    return response


@require_GET
@require_capability("audit.export")
def export_manifest(request, export_id):
    export = _export(export_id)
    _ready_path(export)
    response = HttpResponse(export.manifest, content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export.file_name}.manifest.json"'
    return response


# --- checkpoints and SIEM (administrators) -------------------------------------------
@require_POST
@require_capability("audit.configure")
def checkpoint_now(request):
    outcome = audit_checkpoint_request()
    if outcome["ok"]:
        messages.success(request, f"Checkpoint signed at event {outcome['verified_position']}.")
    else:
        messages.error(request, f"Not signed: the chain is broken at event {outcome['first_bad_position']}: "
                                f"{outcome['reason']}")
    return redirect("audit:list")


@require_http_methods(["GET", "POST"])
@require_capability("audit.view")
def siem_settings(request):
    collector = siem_collector()
    may_configure = has_capability(request.user, "audit.configure")
    if request.method == "POST":
        if not may_configure:
            raise PermissionDenied("audit.configure")
        form = SiemForm(request.POST)
        if form.is_valid():
            siem_configure(**form.cleaned_data)
            messages.success(request, "SIEM forwarding saved.")
            return redirect("audit:siem")
    else:
        initial = {"host": collector.host, "port": collector.port, "ca_pem": collector.ca_pem, "enabled": collector.enabled}
        form = SiemForm(initial=initial)
    return render(
        request, "audit/siem.html",
        {"form": form, "collector": collector, "may_configure": may_configure, "head_position": audit_head()[0]},
    )


@require_POST
@require_capability("audit.configure")
def siem_forward_now(request):
    """Forwarding can mean thousands of events over the network: a job does it, and the
    job's page shows how it went."""
    job = siem_forward_start(user=request.user)
    messages.success(request, f"SIEM forwarding is queued as job #{job.pk}.")
    return redirect("jobs:detail", pk=job.pk)
