from django.apps import AppConfig


class PreflightConfig(AppConfig):
    name = "pamportal.preflight"
    label = "preflight"

    def ready(self) -> None:
        from . import jobs  # noqa: F401  registers the "preflight" job kind
