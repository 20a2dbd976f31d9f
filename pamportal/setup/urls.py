from django.urls import path

from . import views

app_name = "setup"
urlpatterns = [
    path("", views.start, name="start"),
    path("token/", views.token_step, name="token"),
    path("administrator/", views.administrator_step, name="administrator"),
    path("totp/", views.totp_step, name="totp"),
]
