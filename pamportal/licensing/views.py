"""Licence pages: what the node is licensed for, and replacing the licence. Thin: the
form reads the upload and hands it to ``licence_install``, which decides."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from pamportal.accounts.decorators import require_capability

from . import selectors
from .forms import LicenceUploadForm


@never_cache
@require_GET
@require_capability("licence.view")
def licence_detail(request):
    status = selectors.licence_status_for(request)
    return render(
        request,
        "licensing/detail.html",
        {
            "status": status,
            # The row licence_status just read (None: no licence installed).
            "current": status.licence,
            "history": selectors.licence_history(),
        },
    )


@never_cache
@require_capability("licence.manage")
@require_http_methods(["GET", "POST"])
def licence_upload(request):
    error = None
    status = 200
    if request.method == "POST":
        licence, error = LicenceUploadForm(request.POST, request.FILES).install(user=request.user)
        if licence is not None:
            messages.success(
                request,
                f"Licence {licence.licence_id} installed: {licence.customer}, {licence.edition} edition, "
                f"up to {licence.max_nodes} nodes.",
            )
            return redirect("licensing:detail")
        status = 400
    return render(
        request,
        "licensing/upload.html",
        {"licence_error": error, "current": selectors.licence_current()},
        status=status,
    )
