from django.urls import path

from pamportal.accounts.views import placeholder

app_name = "audit"
urlpatterns = [path("", placeholder, name="list")]
