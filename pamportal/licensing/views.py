"""Licence pages: what the node is licensed for, and replacing the licence. Thin: the
form reads the upload, ``licence_install`` decides."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from pamportal.accounts.decorators import require_capability
from pamportal.crypto.licence import MAX_BYTES

from . import selectors
from .forms import UPLOAD_FIELD, LicenceUploadForm
from .models import Licence
from .services import LicenceRefused, licence_install


def licence_upload_from_request(request: HttpRequest) -> tuple[Licence | None, str | None]:
    """Install the licence file posted in ``request`` (field ``licence_file``).

    Returns (licence, None) when installed, or (None, message for the operator) when
    refused; every refused file has been audited. The caller checks who may do this.
    """
    form = LicenceUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return None, " ".join(form.errors.get(UPLOAD_FIELD) or ["Choose the licence file to upload."])
    uploaded = form.cleaned_data[UPLOAD_FIELD]
    # Never read more than one byte past the limit: a larger file (its size is known
    # before reading) is refused on its length alone.
    data = uploaded.read(MAX_BYTES + 1)
    try:
        licence = licence_install(data=data, user=request.user, filename=uploaded.name or "")
    except LicenceRefused as refused:
        return None, refused.message
    return licence, None


@never_cache
@require_GET
@require_capability("licence.view")
def licence_detail(request):
    return render(
        request,
        "licensing/detail.html",
        {
            "status": selectors.licence_status(),
            "current": selectors.licence_current(),
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
        licence, error = licence_upload_from_request(request)
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
