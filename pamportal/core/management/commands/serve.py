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
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

STOP_GRACE_SECONDS = 20
# A new certificate is picked up once its file has stayed unchanged this long, so a
# reload never catches the key and the certificate half-written.
CERT_SETTLE_SECONDS = 1.0


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
    help = "Run the HTTPS console and the Celery worker (with beat) until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
        parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")

    def commands(self, workers: int, concurrency: int) -> dict[str, list[str]]:
        if not (settings.PAM_TLS_CERT.exists() and settings.PAM_TLS_KEY.exists()):
            raise CommandError("no TLS certificate in the data dir: run `manage.py tls_ensure` first")
        bind = settings.PAM_BIND_ADDRESS
        bind = f"[{bind}]" if ":" in bind else bind
        return {
            "web": [
                sys.executable, "-m", "gunicorn", "pamportal.wsgi:application",
                "--bind", f"{bind}:{settings.PAM_HTTPS_PORT}",
                "--certfile", str(settings.PAM_TLS_CERT), "--keyfile", str(settings.PAM_TLS_KEY),
                "--workers", str(workers), "--worker-class", "gthread", "--threads", "4",
                "--timeout", "60", "--access-logfile", "-", "--forwarded-allow-ips", "",
            ],
            "worker": [
                sys.executable, "-m", "celery", "-A", "pamportal", "worker", "--beat",
                "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
                "--loglevel", "INFO", "--concurrency", str(concurrency),
                "-Q", settings.CELERY_TASK_DEFAULT_QUEUE,
            ],
        }

    def handle(self, *args, workers: int, concurrency: int, **options):
        commands = self.commands(workers, concurrency)
        host = "localhost" if settings.PAM_BIND_ADDRESS in ("127.0.0.1", "0.0.0.0", "::") else settings.PAM_BIND_ADDRESS
        self.stdout.write(self.style.SUCCESS(f"pamportal console: https://{host}:{settings.PAM_HTTPS_PORT}/"))
        self.stdout.write("Press Ctrl-C to stop the console and the worker.")
        processes = {name: subprocess.Popen(cmd, start_new_session=True) for name, cmd in commands.items()}
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
                if watch.changed() and processes["web"].poll() is None:
                    self.stdout.write("TLS certificate replaced: reloading the console (SIGHUP to gunicorn)")
                    os.kill(processes["web"].pid, signal.SIGHUP)
                for name, proc in processes.items():
                    if proc.poll() is not None:
                        self.stderr.write(f"{name} exited with status {proc.returncode}; stopping the node")
                        exit_code = proc.returncode or 1
                        stopping = True
                        break
                time.sleep(0.5)
        finally:
            self._stop_all(processes)
        if exit_code:
            raise CommandError(f"a node process failed (status {exit_code})")
        self.stdout.write("pamportal stopped.")

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
