from django.apps import AppConfig


class SetupConfig(AppConfig):
    name = "pamportal.setup"
    label = "setup"

    def ready(self) -> None:
        from . import join  # noqa: F401  (registers the follower's "cluster.follow" job kind)
