from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "pamportal.backups"
    label = "backups"

    def ready(self) -> None:
        from . import jobs  # noqa: F401  (registers the backup job kind)
