from django.urls import path

from . import views

app_name = "preflight"
urlpatterns = [
    path("", views.run_list, name="list"),
    path("run/", views.run_start, name="run"),
    path("<int:pk>/", views.run_detail, name="detail"),
    path("<int:pk>/results/", views.run_results, name="results"),
    path("outcome/<int:pk>/accept/", views.warning_accept, name="accept"),
]
