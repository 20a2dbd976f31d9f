from django.apps import AppConfig


class LicensingConfig(AppConfig):
    name = "pamportal.licensing"
    label = "licensing"
