from django.apps import AppConfig


class ReplicationConfig(AppConfig):
    """The cluster's database under Patroni: no models of its own, a management command
    (``database_to_patroni``) and the node's member."""

    name = "pamportal.replication"
    label = "replication"
    verbose_name = "Replication"
