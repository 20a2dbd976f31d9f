"""URL map of the web console."""

from django.urls import include, path

from pamportal.core import views as core_views

urlpatterns = [
    path("", include("pamportal.nodes.urls")),
    path("setup/", include("pamportal.setup.urls")),
    path("account/", include("pamportal.accounts.urls")),
    path("audit/", include("pamportal.audit.urls")),
    path("jobs/", include("pamportal.jobs.urls")),
    path("licence/", include("pamportal.licensing.urls")),
    path("preflight/", include("pamportal.preflight.urls")),
    path("cluster/", include("pamportal.cluster.urls")),
    path("backups/", include("pamportal.backups.urls")),
    path("healthz", core_views.healthz, name="healthz"),
    # The cluster APIs; each is answered only on its own port (see pamportal.wsgi).
    path("", include("pamportal.cluster.api_urls")),
]

handler403 = "pamportal.core.views.permission_denied"
handler404 = "pamportal.core.views.not_found"
handler500 = "pamportal.core.views.server_error"
