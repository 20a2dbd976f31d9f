from django.urls import path

from pamportal.accounts.views import placeholder

app_name = "jobs"
urlpatterns = [path("", placeholder, name="list")]
