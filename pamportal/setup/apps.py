from django.apps import AppConfig


class SetupConfig(AppConfig):
    name = "pamportal.setup"
    label = "setup"
