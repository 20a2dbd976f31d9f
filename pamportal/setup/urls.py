from django.urls import path

from pamportal.accounts.views import placeholder

app_name = "setup"
urlpatterns = [path("", placeholder, name="start")]
