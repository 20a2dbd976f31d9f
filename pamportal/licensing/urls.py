from django.urls import path

from . import views

app_name = "licensing"
urlpatterns = [
    path("", views.licence_detail, name="detail"),
    path("upload/", views.licence_upload, name="upload"),
]
