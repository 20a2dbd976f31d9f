from django.urls import path

from pamportal.accounts.views import placeholder

app_name = "nodes"
urlpatterns = [path("", placeholder, name="dashboard")]
