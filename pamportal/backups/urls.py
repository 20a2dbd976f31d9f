from django.urls import path

from . import views

app_name = "backups"
urlpatterns = [
    path("", views.backup_list, name="list"),
    path("start/", views.backup_start_view, name="start"),
    path("<int:pk>/download/", views.backup_download_view, name="download"),
]
