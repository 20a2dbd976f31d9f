from django.apps import AppConfig


class NodesConfig(AppConfig):
    name = "pamportal.nodes"
    label = "nodes"

    def ready(self) -> None:
        # Imported once the app registry is ready (it uses models): registers the
        # "collect facts" job kind.
        from . import facts  # noqa: F401
