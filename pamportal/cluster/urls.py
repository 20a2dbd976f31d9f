from django.urls import path

from . import views

app_name = "cluster"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("bundles/", views.bundles, name="bundles"),
    path("bundles/new", views.bundle_generate, name="bundle_generate"),
    path("bundles/<uuid:bundle_id>/download", views.bundle_download, name="bundle_download"),
    path("bundles/<uuid:bundle_id>/revoke", views.bundle_revoke, name="bundle_revoke"),
    path("requests/", views.requests, name="requests"),
    path("requests/<str:kind>/<int:pk>/vote", views.vote, name="vote"),
    path("policy/", views.policy, name="policy"),
    path("members/<int:pk>/remove", views.member_remove, name="member_remove"),
    path("removed/", views.removed, name="removed"),
    path("leadership/", views.leadership, name="leadership"),
    path("members/<int:pk>/lead", views.leadership_request, name="leadership_request"),
    path("leadership/<int:pk>/vote", views.leadership_vote, name="leadership_vote"),
    path("leadership/failover", views.failover_mode, name="failover_mode"),
]
