"""The console's gunicorn worker: gunicorn's threaded worker (``gthread``) that takes a
new connection only while one of its threads is idle.

gunicorn's own gthread worker accepts every connection it can (up to
``worker_connections``, 1,000) whatever its threads are doing, and a kept-alive
connection stays with the worker that accepted it. When many clients connect at once,
one worker can take them all: measured here with 20 signed-in sessions over two
workers, one worker held all 20 connections and the other none, so the node used one
of its two CPUs and the dashboard's p95 doubled. Accepting only with an idle thread is
what the synchronous worker does by construction; the connections then spread over
the workers as their threads free up, and a connection that waits is in the kernel's
accept queue, where every worker can take it.

While every thread stays busy (clients sending request after request with no pause),
a worker still takes one waiting connection every ``ACCEPT_GRACE`` seconds, so that a
newcomer waits a fraction of a second rather than until a thread happens to be idle.

The rest is gunicorn's: keep-alive, deferred reads of slow clients, timeouts, graceful
shutdown (during which nothing is accepted, as before).
"""

from __future__ import annotations

import time

from gunicorn.workers.gthread import ThreadWorker

ACCEPT_GRACE = 0.1  # seconds a busy worker keeps a waiting connection out, at most


class BalancedThreadWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.busy_threads = 0  # requests submitted to the pool and not finished; main thread only
        self.held_off_since: float | None = None  # when this worker stopped taking connections

    def enqueue_req(self, conn):
        self.busy_threads += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs):
        self.busy_threads -= 1
        super().finish_request(conn, fs)

    def accept(self, listener):
        super().accept(listener)
        if self.held_off_since is not None:
            self.held_off_since = time.monotonic()  # the grace is spent: one more wait

    def wait_for_and_dispatch_events(self, timeout):
        if self.alive:  # a stopping worker accepts nothing (gunicorn has switched it off)
            room = self.nr_conns < self.worker_connections
            idle = self.busy_threads < self.cfg.threads
            now = time.monotonic()
            if idle or not room:
                self.held_off_since = None
            elif self.held_off_since is None:
                self.held_off_since = now
            self.set_accept_enabled(room and (idle or now - self.held_off_since >= ACCEPT_GRACE))
            timeout = min(timeout, ACCEPT_GRACE)
        super().wait_for_and_dispatch_events(timeout)
