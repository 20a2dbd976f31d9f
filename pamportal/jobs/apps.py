from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "pamportal.jobs"
    label = "jobs"

    def ready(self) -> None:
        # Plugins register kinds and may use models: only once the registry is ready.
        from . import registry

        registry.load_plugins()
