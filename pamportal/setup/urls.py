from django.urls import path

from . import join_views, views

app_name = "setup"
urlpatterns = [
    path("", views.start, name="start"),
    path("token/", views.token_step, name="token"),
    path("administrator/", views.administrator_step, name="administrator"),
    path("totp/", views.totp_step, name="totp"),
    # After the administrator exists (capability "setup.finalise").
    path("node/", views.node_step, name="node"),
    path("preflight/", views.preflight_step, name="preflight"),
    path("preflight/start/", views.preflight_start, name="preflight_start"),
    path("preflight/next/", views.preflight_next, name="preflight_next"),
    path("licence/", views.licence_step, name="licence"),
    path("licence/next/", views.licence_next, name="licence_next"),
    path("mek/", views.mek_step, name="mek"),
    path("mek/generate/", views.mek_generate, name="mek_generate"),
    path("mek/download/", views.mek_download, name="mek_download"),
    path("mek/confirm/", views.mek_confirm, name="mek_confirm"),
    path("mek/discard/", views.mek_discard, name="mek_discard"),
    path("finalise/", views.finalise_step, name="finalise"),
    # Or: join an existing cluster as a follower.
    path("join/", join_views.join_start, name="join"),
    path("join/status/", join_views.join_status, name="join_status"),
    path("join/check/", join_views.join_check, name="join_check"),
    path("join/send/", join_views.join_send, name="join_send"),
    path("join/discard/", join_views.join_discard, name="join_discard"),
]
