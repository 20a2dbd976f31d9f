from django.urls import path

from . import views

app_name = "accounts"
urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("totp/", views.totp_enrol, name="totp_enrol"),
    path("password/", views.password_change_view, name="password_change"),
    path("users/", views.user_list, name="user_list"),
    path("users/new/", views.user_create, name="user_create"),
    path("users/<int:user_id>/disable/", views.user_disable, name="user_disable"),
    path("users/<int:user_id>/enable/", views.user_enable, name="user_enable"),
    path("users/<int:user_id>/reset/", views.user_reset, name="user_reset"),
    path("users/<int:user_id>/unlock/", views.user_unlock, name="user_unlock"),
]
