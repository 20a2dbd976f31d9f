"""Run the node in the foreground: the HTTPS console (gunicorn) and the Celery worker
with its beat scheduler. Ctrl-C (or SIGTERM) stops all of them. When the console's
certificate file is replaced (setup finalised, certificate renewed), gunicorn is
reloaded so that it serves the new one.

A small supervisor rather than honcho/supervisord: it needs the node's own settings
(ports, TLS files, queue) to build the command lines, and must stop everything when
any one process dies, which is a dozen lines here.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pamportal.cluster.etcd_process import command_line
from pamportal.cluster.local_etcd import etcd_available, local_member_config
from pamportal.core import config
from pamportal.nodes.services import ca_cert_path

# A warm Celery shutdown waits for running steps (a join can wait for hours); after
# this grace the rest is killed, which leases and idempotent steps make safe.
STOP_GRACE_SECONDS = 10
# A new certificate is picked up once its file has stayed unchanged this long, so a
# reload never catches the key and the certificate half-written.
CERT_SETTLE_SECONDS = 1.0
# OpenSSL cipher list for TLS 1.2: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
GUNICORN_CONFIG = Path(__file__).resolve().parents[3] / "gunicorn_conf.py"


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


class Command(BaseCommand):
    help = "Run the node: HTTPS console, Celery worker (with beat), and once the node has its cluster certificate the setup API, the delegation API and its etcd member."

    def add_arguments(self, parser):
        parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
        parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")

    @staticmethod
    def _bind(port: int) -> str:
        bind = settings.PAM_BIND_ADDRESS
        return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"

    def _gunicorn(self, port: int, workers: int, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", "pamportal.wsgi:application",
            "--bind", self._bind(port),
            "--certfile", str(settings.PAM_TLS_CERT), "--keyfile", str(settings.PAM_TLS_KEY),
            "--workers", str(workers), "--worker-class", "gthread", "--threads", "4",
            "--timeout", "60", "--access-logfile", "-", "--forwarded-allow-ips", "",
            # TLS 1.2 with forward secrecy and AEAD only (TLS 1.3 suites are all AEAD);
            # the chain, TLS 1.2 minimum and no Server banner: GUNICORN_CONFIG.
            "--ciphers", TLS12_CIPHERS, "--config", str(GUNICORN_CONFIG),
            # gunicorn's default control socket is ~/.gunicorn/gunicorn.ctl, one for
            # every listener of every node on the host; serve drives the masters
            # with signals, so none.
            "--no-control-socket",
            "--umask", "0o077",
            *extra,
        ]

    def commands(self, workers: int, concurrency: int) -> dict[str, list[str]]:
        """The processes without which the node is down: console and worker.

        ``PAM_SERVE_WITHOUT_WORKER=1`` leaves the worker out, for split deployments
        (the worker runs under its own supervisor) and for tests that kill and
        restart a node's worker on their own; the worker must then run elsewhere."""
        if not (settings.PAM_TLS_CERT.exists() and settings.PAM_TLS_KEY.exists()):
            raise CommandError("no TLS certificate in the data dir: run `manage.py tls_ensure` first")
        commands = {"web": self._gunicorn(settings.PAM_HTTPS_PORT, workers)}
        if not config.env("PAM_SERVE_WITHOUT_WORKER", False, bool):
            commands["worker"] = [
                sys.executable, "-m", "celery", "-A", "pamportal", "worker", "--beat",
                "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
                "--loglevel", "INFO", "--concurrency", str(concurrency),
                "-Q", settings.CELERY_TASK_DEFAULT_QUEUE,
            ]
        return commands

    def cluster_commands(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """The cluster listeners and etcd, wanted once their prerequisites exist: the
        cluster CA (setup finalised or joined) and this node's member configuration."""
        wanted: dict[str, tuple[list[str], dict[str, str]]] = {}
        ca = ca_cert_path()
        if ca.exists():
            wanted["setup-api"] = (self._gunicorn(settings.PAM_SETUP_API_PORT, 1), {"PAM_LISTENER": "setup-api"})
            wanted["delegation"] = (
                # Mutual TLS: only clients with a certificate from the cluster CA.
                self._gunicorn(settings.PAM_DELEGATION_API_PORT, 1, "--cert-reqs", "2", "--ca-certs", str(ca)),
                {"PAM_LISTENER": "delegation"},
            )
        member = local_member_config()
        if member is not None and ca.exists() and etcd_available():
            Path(member.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            wanted["etcd"] = (command_line(member), {})
        return wanted

    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        full_env = {**os.environ, **(env or {})}
        if name == "etcd":
            log = open(Path(settings.PAM_LOG_DIR) / "etcd.log", "ab")
            try:
                return subprocess.Popen(command, start_new_session=True, env=full_env, stdout=log, stderr=subprocess.STDOUT)
            finally:
                log.close()
        return subprocess.Popen(command, start_new_session=True, env=full_env)

    def handle(self, *args, workers: int, concurrency: int, **options):
        # Every process started below (gunicorn, Celery worker and beat, etcd) inherits
        # the mask: what they write in the data dir is for this user only.
        os.umask(0o077)
        for path in tighten_data_dir(Path(settings.PAM_DATA_DIR)):
            self.stderr.write(f"warning: could not make {path} owner-only")
        commands = self.commands(workers, concurrency)
        host = "localhost" if settings.PAM_BIND_ADDRESS in ("127.0.0.1", "0.0.0.0", "::") else settings.PAM_BIND_ADDRESS
        self.stdout.write(self.style.SUCCESS(f"pamportal console: https://{host}:{settings.PAM_HTTPS_PORT}/"))
        self.stdout.write("Press Ctrl-C to stop the console and the worker.")
        processes = {name: self._start(name, cmd) for name, cmd in commands.items()}
        restart_after: dict[str, float] = {}
        backoff: dict[str, float] = {}
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        exit_code = 0
        watch = CertificateWatch()
        try:
            while not stopping:
                if watch.changed():
                    self.stdout.write("TLS certificate replaced: reloading the listeners (SIGHUP to gunicorn)")
                    for name in ("web", "setup-api", "delegation"):
                        if name in processes and processes[name].poll() is None:
                            os.kill(processes[name].pid, signal.SIGHUP)
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
            self._stop_all(processes)
        if exit_code:
            raise CommandError(f"a node process failed (status {exit_code})")
        self.stdout.write("pamportal stopped.")

    def _supervise_cluster(self, processes, restart_after, backoff) -> None:
        """Start wanted cluster processes, restart them (with back-off) when they die,
        stop the ones no longer wanted (e.g. etcd after this node left the cluster)."""
        wanted = self.cluster_commands()
        now = time.monotonic()
        for name in [n for n in processes if n not in ("web", "worker") and n not in wanted]:
            self.stdout.write(f"{name} is no longer needed on this node: stopping it")
            self._stop_all({name: processes.pop(name)})
        for name, (command, env) in wanted.items():
            proc = processes.get(name)
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                self.stderr.write(f"{name} exited with status {proc.returncode}")
                del processes[name]
                backoff[name] = min(backoff.get(name, 1.0) * 2, 30.0)
                restart_after[name] = now + backoff[name]
            if now < restart_after.get(name, 0):
                continue
            self.stdout.write(f"starting {name}")
            processes[name] = self._start(name, command, env)
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
