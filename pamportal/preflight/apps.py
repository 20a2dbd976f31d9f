from django.apps import AppConfig


class PreflightConfig(AppConfig):
    name = "pamportal.preflight"
    label = "preflight"
