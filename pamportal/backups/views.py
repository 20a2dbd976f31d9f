"""The Backups page: this cluster's backups with their proofs, "Start a backup", and
the download of a proven archive (administrators)."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from pamportal.accounts.decorators import require_capability
from pamportal.core.htmx import htmx_partial, stop_polling
from pamportal.core.views import refused_redirect
from pamportal.nodes.selectors import node_address

from . import selectors
from .services import BackupActionRefused, backup_download, backup_start

PAGE_SIZE = 50


@require_capability("backups.view")
@require_GET
def backup_list(request):
    """The page; an htmx poll gets only the table, and 286 (stop polling) once no backup
    is under way."""
    page = Paginator(selectors.backup_list(user=request.user), PAGE_SIZE).get_page(request.GET.get("page"))
    active = selectors.backup_job_active()
    page.object_list = selectors.backup_jobs_attach(page.object_list)
    context = {"page": page, "active": active, "this_node": node_address()}
    if htmx_partial(request):
        response = render(request, "backups/_table.html", context)
        return response if active is not None else stop_polling(response)
    context["space"] = selectors.backup_space()
    return render(request, "backups/list.html", context)


@require_capability("backups.run")
@require_POST
def backup_start_view(request):
    try:
        job = backup_start(user=request.user)
    except BackupActionRefused as refused:
        return refused_redirect(request, refused, "backups:list")
    messages.success(request, f"Backup queued as job #{job.pk}; this page shows it when it is done.")
    return redirect("backups:list")


@require_capability("backups.download")
@require_POST
def backup_download_view(request, pk: int):
    try:
        selectors.access_backup_by_id(request.user, pk)
    except selectors.BackupNotFound:
        raise Http404(f"no backup #{pk}") from None
    try:
        archive = backup_download(user=request.user, backup_id=pk)
    except BackupActionRefused as refused:
        return refused_redirect(request, refused, "backups:list")
    response = FileResponse(archive.handle, as_attachment=True, filename=archive.name,
                            content_type="application/octet-stream")
    response["Cache-Control"] = "no-store"
    return response
