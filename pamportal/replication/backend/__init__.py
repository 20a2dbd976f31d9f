"""Django's PostgreSQL backend following the cluster's member list: ``ENGINE =
"pamportal.replication.backend"`` (see ``base`` and ``replication.database``)."""
