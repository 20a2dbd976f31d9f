from django.apps import AppConfig


class ClusterConfig(AppConfig):
    name = "pamportal.cluster"
    label = "cluster"

    def ready(self) -> None:
        from . import jobs  # noqa: F401  registers "cluster.bundle", "cluster.join" and "cluster.remove"
