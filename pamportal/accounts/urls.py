from django.urls import path

from . import views

app_name = "accounts"
urlpatterns = [
    path("login/", views.placeholder, name="login"),
    path("logout/", views.placeholder, name="logout"),
    path("totp/", views.placeholder, name="totp_enrol"),
    path("password/", views.placeholder, name="password_change"),
    path("users/", views.placeholder, name="user_list"),
]
