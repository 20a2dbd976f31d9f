from django.urls import path

from . import views

app_name = "audit"
urlpatterns = [
    path("", views.event_list, name="list"),
    path("<int:position>/", views.event_detail, name="detail"),
    path("export/", views.export_create, name="export"),
    path("exports/<uuid:export_id>/", views.export_detail, name="export_detail"),
    path("exports/<uuid:export_id>/file/", views.export_file, name="export_file"),
    path("exports/<uuid:export_id>/manifest/", views.export_manifest, name="export_manifest"),
    path("exports/verifier/", views.export_verifier, name="export_verifier"),
    path("checkpoint/", views.checkpoint_now, name="checkpoint"),
    path("siem/", views.siem_settings, name="siem"),
    path("siem/forward/", views.siem_forward_now, name="siem_forward"),
]
