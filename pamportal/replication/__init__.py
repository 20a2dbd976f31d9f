"""The cluster's database: one PostgreSQL 15 member per node, managed by Patroni on the
node's own etcd, with TLS and cluster-CA certificates on every connection.

``config`` builds a member's Patroni configuration, ``process`` lays out its files and
runs it as the ``postgres`` user, ``rest`` talks to Patroni's REST API. Patroni owns
election, replication, switchover, failover and ``pg_rewind``; nothing here decides
who leads.
"""
