"""Run the node in the foreground: the HTTPS console (gunicorn) and the Celery worker
with its beat scheduler. Ctrl-C (or SIGTERM) stops all of them. When the console's
certificate file is replaced (setup finalised, certificate renewed), gunicorn is
reloaded so that it serves the new one.

A small supervisor rather than honcho/supervisord: it needs the node's own settings
(ports, TLS files, queue) to build the command lines, and must stop everything when
any one process dies, which is a dozen lines here.

The command lines are those of ``pamportal.core.units.node_processes``, the same ones
the systemd units of ``manage.py install_units`` run (production). Children never
outlive serve: each is started with PR_SET_PDEATHSIG, so a serve killed with SIGKILL
takes its console, worker and etcd member with it.

The etcd member runs ``manage.py run_etcd``. Its lifecycle can be kept apart from the
app's: ``serve --no-etcd`` (or ``PAM_SERVE_WITHOUT_ETCD=1``) leaves it out, and
``manage.py run_etcd`` runs the member in a terminal (or a supervisor) of its own, so
restarting serve never restarts the member. In production it is a unit of its own
(``pamportal-etcd.service``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from pamportal.cluster.local_etcd import etcd_available, local_member_config
from pamportal.cluster.removed import etcd_log_says_removed, removal_check
from pamportal.core import config
from pamportal.core.context import acting
from pamportal.core.units import GUNICORN_CONFIG, TLS12_CIPHERS, NodeLayout, NodeProcess, gunicorn_argv, node_processes

__all__ = ["GUNICORN_CONFIG", "TLS12_CIPHERS", "Command", "tighten_data_dir"]

# A warm Celery shutdown waits for running steps (a join can wait for hours); after
# this grace the rest is killed, which leases and idempotent steps make safe.
STOP_GRACE_SECONDS = 10
# A new certificate is picked up once its file has stayed unchanged this long, so a
# reload never catches the key and the certificate half-written.
CERT_SETTLE_SECONDS = 1.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int, death_signal: int = signal.SIGTERM):
    """A ``preexec_fn``: the child gets ``death_signal`` when serve dies, however it
    dies (SIGKILL included). It survives the exec (not a set-user-ID program). If
    serve died before prctl took effect, the child is already an orphan: it exits."""

    def preexec() -> None:
        if _libc is None:
            return
        if _libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def tighten_data_dir(root: Path) -> list[Path]:
    """Make the data dir and everything already in it owner-only (no group or other
    bits): an installer or an older version may have left 0755/0644 behind, and the
    process umask (077) only covers what is created from now on. Symbolic links are
    neither followed nor changed. Returns what could not be changed."""
    failed: list[Path] = []

    def tighten(path: Path) -> None:
        try:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                path.chmod(stat.S_IMODE(mode) & ~0o077)
        except FileNotFoundError:
            pass  # removed meanwhile
        except OSError:
            failed.append(path)

    tighten(root)
    for directory, dirnames, filenames in os.walk(root, onerror=lambda error: failed.append(Path(error.filename))):
        for name in (*dirnames, *filenames):
            tighten(Path(directory) / name)
    return failed


def _cert_stamp() -> tuple[int, int] | None:
    """(mtime in ns, inode) of the certificate file: an atomic rename changes both."""
    try:
        stat = os.stat(settings.PAM_TLS_CERT)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_ino


class CertificateWatch:
    """Tells when the console's certificate file has been replaced and has settled.

    gunicorn's master, on SIGHUP, starts new workers with the configuration read
    again and stops the old ones gracefully; new workers load the new certificate."""

    def __init__(self):
        self.served = _cert_stamp()
        self.seen = self.served
        self.seen_at = time.monotonic()

    def changed(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        stamp = _cert_stamp()
        if stamp != self.seen:
            self.seen, self.seen_at = stamp, now
            return False
        if stamp is not None and stamp != self.served and now - self.seen_at >= CERT_SETTLE_SECONDS:
            if not settings.PAM_TLS_KEY.exists():
                return False
            self.served = stamp
            return True
        return False


class DatabaseWatch:
    """Tells when ``database.json`` appears while the node runs: a join made this node a
    replica of the cluster's database (``replication.join``), and the console, the
    worker and serve itself must move from SQLite onto it. Settings are read once per
    process, so the console's workers are reloaded (SIGHUP: gunicorn starts new workers,
    which read the settings again) and the worker is restarted; serve swaps its own
    connection settings in place (it is one thread)."""

    RETRY_SECONDS = 5.0

    def __init__(self):
        from pamportal.replication.database import database_file_path

        self.path = database_file_path(settings.PAM_DATA_DIR)
        # A node started on database.json is already on it (serve waited for it above).
        self.state = "done" if self.path.exists() else "idle"
        self.next_try = 0.0
        self.since = 0.0

    def appeared(self, now: float) -> bool:
        return self.state == "idle" and now >= self.next_try and self.path.exists()

    def gone(self) -> bool:
        """The node left the cluster's database (the wipe after its removal moved the
        file aside): back to its own."""
        return self.state == "done" and not self.path.exists()


class Command(BaseCommand):
    help = "Run the node: HTTPS console, Celery worker (with beat), and once the node has its cluster certificate the setup API, the delegation API and its etcd member."

    def add_arguments(self, parser):
        parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
        parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
        parser.add_argument("--no-etcd", action="store_true",
                            help="do not run the etcd member (run `manage.py run_etcd` on its own instead)")
        parser.add_argument("--prepare", action="store_true",
                            help="first make the node ready, as `make run` does: its TLS certificate, its "
                                 "database (its PostgreSQL member started and answering), migrations, static "
                                 "files and, before setup, a setup token")

    def _gunicorn(self, port: int, workers: int, *extra: str) -> list[str]:
        return gunicorn_argv(NodeLayout.from_settings(), port, workers, *extra)

    def processes(self, workers: int = 2, concurrency: int = 2) -> dict[str, NodeProcess]:
        """Every process this node may run, from the function the systemd units are
        written from (``units.node_processes``).

        ``PAM_SERVE_WITHOUT_WORKER=1`` leaves the worker out, for split deployments
        (the worker runs under its own supervisor) and for tests that kill and
        restart a node's worker on their own; the worker must then run elsewhere."""
        return node_processes(NodeLayout.from_settings(), workers=workers, concurrency=concurrency,
                              with_worker=not config.env("PAM_SERVE_WITHOUT_WORKER", False, bool))

    def commands(self, workers: int, concurrency: int) -> dict[str, list[str]]:
        """The processes without which the node is down: console and worker."""
        if not (settings.PAM_TLS_CERT.exists() and settings.PAM_TLS_KEY.exists()):
            raise CommandError("no TLS certificate in the data dir: run `manage.py tls_ensure` first")
        return {name: p.argv for name, p in self.processes(workers, concurrency).items() if p.essential}

    def cluster_commands(self, without_etcd: bool = False) -> dict[str, tuple[list[str], dict[str, str]]]:
        """The cluster listeners and etcd, wanted once their files exist (the cluster
        CA: setup finalised or joined; for etcd also a readable member configuration)."""
        wanted: dict[str, tuple[list[str], dict[str, str]]] = {}
        for name, process in self.processes().items():
            if process.essential or not all(path.exists() for path in process.requires_files):
                continue
            if name == "etcd" and (without_etcd or local_member_config() is None or not etcd_available()):
                continue
            wanted[name] = (process.argv, process.env)
        return wanted

    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        full_env = {**os.environ, **(env or {})}
        layout = NodeLayout.from_settings()
        process = node_processes(layout).get(name)
        death_signal = process.death_signal if process is not None else signal.SIGTERM
        # Its own session, so that a Ctrl-C reaches serve alone (which stops the
        # children in order); the death signal, so that none outlives serve.
        if process is not None and process.user is not None:
            # The PostgreSQL member: as its user, with its clean environment and log,
            # exactly as database_to_patroni and the tests start it.
            from pamportal.replication.local import node_member_start, patroni_node_process

            return node_member_start(patroni_node_process()).popen
        options = dict(start_new_session=True, env=full_env, cwd=str(layout.app_dir),
                       preexec_fn=die_with_parent(os.getpid(), death_signal))
        if name == "etcd":
            log = open(Path(settings.PAM_LOG_DIR) / "etcd.log", "ab")
            # Where this run's output starts: only it can say this member was removed.
            self.etcd_log_offset = log.seek(0, os.SEEK_END)
            try:
                return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **options)
            finally:
                log.close()
        return subprocess.Popen(command, **options)

    def _wait_for_database(self, processes, restart_after, backoff) -> None:
        """The node's own PostgreSQL member was just started: wait (bounded) until
        Django reaches a read-write member, keeping the member running meanwhile."""
        from django.db import OperationalError

        limit = config.env("PAM_SERVE_DATABASE_WAIT", 120.0, float)
        deadline = time.monotonic() + limit
        self.stdout.write("waiting for the node's database (its PostgreSQL member under Patroni)")
        while True:
            try:
                connections["default"].ensure_connection()
                return
            except OperationalError as exc:
                if time.monotonic() > deadline:
                    log = Path(settings.PAM_POSTGRES_BASE)
                    raise CommandError(f"the node's database did not answer within {limit:.0f} s ({exc}); "
                                       f"see the member's patroni.log under {log}") from exc
            finally:
                connections.close_all()
            self._supervise_cluster(processes, restart_after, backoff)
            time.sleep(1)

    def _prepare(self) -> None:
        """What `make run` does before serving, once the database answers."""
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("setup_token", stdout=self.stdout)
        connections.close_all()

    def handle(self, *args, workers: int, concurrency: int, no_etcd: bool = False, prepare: bool = False,
               **options):
        self.without_etcd = no_etcd or config.env("PAM_SERVE_WITHOUT_ETCD", False, bool)
        # Every process started below (gunicorn, Celery worker and beat, etcd) inherits
        # the mask: what they write in the data dir is for this user only.
        os.umask(0o077)
        for path in tighten_data_dir(Path(settings.PAM_DATA_DIR)):
            self.stderr.write(f"warning: could not make {path} owner-only")
        if prepare:
            from django.core.management import call_command

            call_command("tls_ensure", stdout=self.stdout)
        commands = self.commands(workers, concurrency)
        host = "localhost" if settings.PAM_BIND_ADDRESS in ("127.0.0.1", "0.0.0.0", "::") else settings.PAM_BIND_ADDRESS
        self.stdout.write(self.style.SUCCESS(f"pamportal console: https://{host}:{settings.PAM_HTTPS_PORT}/"))
        self.stdout.write("Press Ctrl-C to stop the console and the worker.")
        restart_after: dict[str, float] = {}
        backoff: dict[str, float] = {}
        # The database member and etcd first (when wanted), so the console finds its
        # database; then the console and the worker.
        processes: dict[str, subprocess.Popen] = {}
        self._supervise_cluster(processes, restart_after, backoff)
        try:
            if "patroni" in processes:
                self._wait_for_database(processes, restart_after, backoff)
            if prepare:
                self._prepare()
        except BaseException:
            self._stop_all(processes)
            raise
        processes.update({name: self._start(name, cmd) for name, cmd in commands.items()})
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        exit_code = 0
        watch = CertificateWatch()
        database_watch = DatabaseWatch()
        try:
            while not stopping:
                if watch.changed():
                    self.stdout.write("TLS certificate replaced: reloading the listeners (SIGHUP to gunicorn)")
                    self._reload_listeners(processes)
                self._follow_database(database_watch, processes, commands)
                for name in commands:
                    if processes[name].poll() is not None:
                        self.stderr.write(f"{name} exited with status {processes[name].returncode}; stopping the node")
                        exit_code = processes[name].returncode or 1
                        stopping = True
                        break
                if not stopping:
                    self._supervise_cluster(processes, restart_after, backoff)
                time.sleep(0.5)
        finally:
            # The console and the worker first, then the cluster processes: the
            # database member outlives every client of it.
            self._stop_all({n: p for n, p in processes.items() if n in commands})
            self._stop_all({n: p for n, p in processes.items() if n not in commands})
        if exit_code:
            raise CommandError(f"a node process failed (status {exit_code})")
        self.stdout.write("pamportal stopped.")

    def _reload_listeners(self, processes) -> None:
        for name in ("web", "setup-api", "delegation"):
            if name in processes and processes[name].poll() is None:
                os.kill(processes[name].pid, signal.SIGHUP)

    def _use_database_file(self) -> None:
        """serve's own connections from now on go to the database.json's database (what
        a process started now would read), for what serve itself records."""
        from pamportal.replication import database

        new = database.databases(data_dir=settings.PAM_DATA_DIR, database_url=None,
                                 ca_file=settings.PAM_TLS_CERT.with_name("cluster-ca.crt"),
                                 cert_file=settings.PAM_TLS_CERT, key_file=settings.PAM_TLS_KEY)
        connections.close_all()
        settings.DATABASES["default"] = new["default"]
        connections.__dict__.pop("settings", None)  # a cached_property: read settings.DATABASES again
        try:
            del connections["default"]
        except AttributeError:
            pass

    def _database_answers(self) -> bool:
        from django.db import OperationalError

        try:
            connections["default"].ensure_connection()
            return True
        except OperationalError:
            return False
        finally:
            connections.close_all()

    def _follow_database(self, watch: DatabaseWatch, processes, commands) -> None:
        """database.json appeared (a join): the member is started by the cluster
        supervision (it requires that file); once the database answers, the console's
        listeners are reloaded and the worker restarted onto it. Never blocks long: one
        connection attempt per round (libpq's connect timeout bounds it)."""
        from django.core.exceptions import ImproperlyConfigured

        now = time.monotonic()
        if watch.gone():
            self._use_database_file()
            self.stdout.write("database.json is gone: this node left the cluster's database; moving the console "
                              "and the worker back onto its own")
            self._reload_listeners(processes)
            if "worker" in commands and "worker" in processes:
                self._stop_all({"worker": processes["worker"]})
                processes["worker"] = self._start("worker", commands["worker"])
            watch.state = "idle"
            return
        if watch.appeared(now):
            try:
                self._use_database_file()
            except ImproperlyConfigured as exc:
                self.stderr.write(f"database.json appeared but cannot be used yet: {exc}")
                watch.next_try = now + watch.RETRY_SECONDS
                return
            self.stdout.write("database.json appeared: this node's database is now the cluster's; starting its "
                              "PostgreSQL member and moving the console and the worker onto it")
            watch.state, watch.since, watch.next_try = "switching", now, now
        if watch.state != "switching" or now < watch.next_try:
            return
        if not self._database_answers():
            watch.next_try = now + 1.0
            if now - watch.since > config.env("PAM_SERVE_DATABASE_WAIT", 120.0, float):
                self.stderr.write("the cluster's database does not answer yet; the console and the worker stay as "
                                  "they are until it does")
                watch.since = now
            return
        self.stdout.write("the cluster's database answers: reloading the listeners and restarting the worker")
        self._reload_listeners(processes)
        if "worker" in commands and "worker" in processes:
            self._stop_all({"worker": processes["worker"]})
            processes["worker"] = self._start("worker", commands["worker"])
        watch.state = "done"

    def _supervise_cluster(self, processes, restart_after, backoff) -> None:
        """Start wanted cluster processes, restart them (with back-off) when they die,
        stop the ones no longer wanted (e.g. etcd after this node left the cluster)."""
        wanted = self.cluster_commands(without_etcd=getattr(self, "without_etcd", False))
        now = time.monotonic()
        for name in [n for n in processes if n not in ("web", "worker") and n not in wanted]:
            self.stdout.write(f"{name} is no longer needed on this node: stopping it")
            self._stop_all({name: processes.pop(name)})
        # A process that exited on its own (etcd exits once its peers removed it) and was
        # waiting for its restart when it stopped being wanted: say so, never silently.
        for name in [n for n in restart_after if n not in processes and n not in wanted]:
            self.stdout.write(f"{name} is no longer needed on this node: not starting it again")
            restart_after.pop(name)
            backoff.pop(name, None)
        for name, (command, env) in wanted.items():
            proc = processes.get(name)
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                self.stderr.write(f"{name} exited with status {proc.returncode}")
                del processes[name]
                if name == "etcd" and self._etcd_removed():
                    self.stdout.write("etcd: this node was removed from the cluster; its member is not started again")
                    continue
                backoff[name] = min(backoff.get(name, 1.0) * 2, 30.0)
                restart_after[name] = now + backoff[name]
            if now < restart_after.get(name, 0):
                continue
            self.stdout.write(f"starting {name}")
            processes[name] = self._start(name, command, env)

    def _etcd_removed(self) -> bool:
        """The member exited saying its peers removed it: ask the cluster
        (``removed.removal_check``), which records the removal and moves the member
        configuration aside. True if etcd is no longer wanted."""
        log = Path(settings.PAM_LOG_DIR) / "etcd.log"
        if not etcd_log_says_removed(log, since=getattr(self, "etcd_log_offset", 0)):
            return False
        try:
            with acting(actor_id=None, actor_name="node supervisor"):
                removal_check(etcd_said_removed=True)
        except Exception as exc:  # the supervisor goes on; the periodic check tries again
            self.stderr.write(f"etcd said this node was removed, but recording it failed: {exc}")
        finally:
            connections.close_all()
        return local_member_config() is None

    def _stop_all(self, processes: dict[str, subprocess.Popen]) -> None:
        for proc in processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
