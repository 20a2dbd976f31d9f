from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "pamportal.core"
    label = "core"
