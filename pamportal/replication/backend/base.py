"""Django's PostgreSQL backend, except that each new connection takes its libpq host
list from the node's database.json as it is now, so a process follows members joining
and leaving without a restart (``replication.database.live_hosts``: a stat per
connection, a parse only when the file changed, the last good list kept if it broke).

Everything else (features, operations, psycopg options, health checks) is Django's.
Not with ``OPTIONS["pool"]``: a pool takes its parameters once, when it is made.
"""

from __future__ import annotations

from django.db.backends.postgresql import base as postgresql

from pamportal.replication import database


class DatabaseWrapper(postgresql.DatabaseWrapper):
    def get_connection_params(self):
        params = super().get_connection_params()
        hosts_file = self.settings_dict.get(database.HOSTS_FILE)
        if hosts_file:
            params["host"], params["port"] = database.live_hosts(
                hosts_file, fallback=(str(self.settings_dict["HOST"]), str(self.settings_dict["PORT"])))
        return params
