"""The administrators' audit pages: the filtered event list and one event."""

from __future__ import annotations

import json

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from pamportal.accounts.decorators import require_capability

from . import chain
from .forms import AuditFilterForm
from .models import AuditEvent
from .selectors import audit_event_list, audit_event_neighbours

PAGE_SIZE = 50


@require_GET
@require_capability("audit.view")
def event_list(request):
    form = AuditFilterForm(request.GET or None)
    events = audit_event_list(**form.filters())
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"form": form, "page": page}
    # The filter form and the pager swap only the table when htmx is there.
    template = "audit/_table.html" if request.htmx and not request.htmx.boosted else "audit/list.html"
    return render(request, template, context)


@require_GET
@require_capability("audit.view")
def event_detail(request, position: int):
    event = get_object_or_404(AuditEvent, position=position)
    before, after = audit_event_neighbours(event)
    own_hash = chain.event_hash(
        event.position, event.time, event.actor_id, event.actor_name, event.source_ip, event.request_id,
        event.action, event.target, event.outcome, event.details, event.prev_hash,
    )
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
            "hash_matches": own_hash == event.hash,
            "before": before,
            "after": after,
        },
    )
