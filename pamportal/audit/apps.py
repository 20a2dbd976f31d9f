from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "pamportal.audit"
    label = "audit"

    def ready(self) -> None:
        from . import jobs  # noqa: F401  (registers the export job kind)
