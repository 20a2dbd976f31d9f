from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "pamportal.jobs"
    label = "jobs"

    def ready(self) -> None:
        from . import registry

        registry.load_plugins()
