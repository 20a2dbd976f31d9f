from django.apps import AppConfig


class SetupConfig(AppConfig):
    name = "pamportal.setup"
    label = "setup"

    def ready(self) -> None:
        # Once the app registry is ready (the follower's module uses models): registers
        # the follower's "cluster.follow" job kind, which the join pages start.
        from pamportal.cluster import follower  # noqa: F401
