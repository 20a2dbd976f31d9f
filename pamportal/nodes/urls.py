from django.urls import path

from . import views

app_name = "nodes"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("node/collect-facts/", views.collect_facts, name="collect_facts"),
    path("node/certificates/", views.certificates, name="certificates"),
    path("node/mek-check/", views.mek_check, name="mek_check"),
]
