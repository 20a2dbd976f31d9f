"""Real node processes for tests: a data dir, a database and a queue of their own.

Each node gets a fresh database (PostgreSQL when ``DATABASE_URL`` is set, otherwise a
SQLite file in its data dir), so processes never share state with the test database
and nothing has to be truncated afterwards (the audit table refuses TRUNCATE).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

REPO = Path(__file__).resolve().parents[2]


def using_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


class NodeEnv:
    def __init__(self, data_dir: Path, **extra_env: str):
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.name = "pamportal_node_" + uuid.uuid4().hex[:12]
        self.processes: list[subprocess.Popen] = []
        self._pg_admin_url: str | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_", "DJANGO_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="pamportal.settings",
            PAM_DATA_DIR=str(data_dir),
            PAM_CELERY_QUEUE=self.name,
            # No backup the test did not ask for (a scheduled one is due 5 minutes after a
            # finalised leader's worker starts): a test that wants one passes its own value.
            PAM_BACKUP_INTERVAL_SECONDS="0",
            PYTHONUNBUFFERED="1",
        )
        if using_postgres():
            url = urlparse(os.environ["DATABASE_URL"])
            self._pg_admin_url = urlunparse(url._replace(path="/postgres"))
            with psycopg.connect(self._pg_admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            env["DATABASE_URL"] = urlunparse(url._replace(path="/" + self.name))
        else:
            env.pop("DATABASE_URL", None)
        env.update(extra_env)
        self.env = env

    # -- commands -----------------------------------------------------------------
    def manage(self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None):
        result = subprocess.run(
            [sys.executable, str(REPO / "manage.py"), *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def shell(self, code: str, timeout: float = 120) -> str:
        """Run Python inside the node's Django and return what it printed."""
        return self.manage("shell", "-c", code, timeout=timeout).stdout

    def spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.data_dir / f"{log_name}.log", "ab")
        proc = subprocess.Popen(
            args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes.append(proc)
        return proc

    def start_worker(self, *, beat: bool = True, name: str = "worker") -> subprocess.Popen:
        args = [
            sys.executable, "-m", "celery", "-A", "pamportal", "worker", "--loglevel", "INFO",
            "--concurrency", "1", "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h", "-Q", self.name,
        ]
        if beat:
            args += ["--beat", "--schedule", str(self.data_dir / f"beat-{name}")]
        return self.spawn(args, name)

    def log(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker's pool children too)."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=30)  # longer than serve's own grace for its children
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self, *, keep_database: bool = False) -> None:
        """Stop the node's processes; and drop its PostgreSQL database, unless the node
        is to be started again (``keep_database``: a node that was down for a while)."""
        for proc in self.processes:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)
        self.processes.clear()
        if self._pg_admin_url and not keep_database:
            with psycopg.connect(self._pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self._pg_admin_url = None


def wait_for(predicate, what: str = "condition", *, timeout: float = 15.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, and return that; fail the
    test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def https_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET over HTTPS without verifying the node's self-signed certificate."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def passing_preflight_env() -> dict[str, str]:
    """Settings under which a single node's preflight passes on a test machine: modest
    hardware thresholds, and the other node ports on free high numbers (the console's
    own port is judged as its own). The checks themselves are tested elsewhere."""
    return {
        "PAM_PREFLIGHT_MIN_CPUS": "1",
        "PAM_PREFLIGHT_MIN_MEMORY_GIB": "0.1",
        "PAM_PREFLIGHT_MIN_DISK_FREE_GIB": "0.1",
        "PAM_PREFLIGHT_PROBE_TIMEOUT": "2",
        "PAM_CLIENT_PORT": str(free_port()),
        "PAM_ETCD_PEER_PORT": str(free_port()),
        "PAM_SETUP_API_PORT": str(free_port()),
        "PAM_DELEGATION_API_PORT": str(free_port()),
        "PAM_PATRONI_PORT": str(free_port()),
    }


def start_node(env: NodeEnv, *, host: str = "127.0.0.1", port: int | None = None, small: bool = True) -> str:
    """Migrate, create the TLS certificate and start `manage.py serve` (console and
    worker), as `make run` does: with one web worker and one Celery process when
    ``small``, else with serve's own defaults. Returns the console's base URL once it
    answers."""
    port = port or free_port(host)
    env.env.update(PAM_BIND_ADDRESS=host, PAM_HTTPS_PORT=str(port), PAM_NODE_ADDRESS=host)
    sizes = ["--workers", "1", "--concurrency", "1"] if small else []
    if (env.data_dir / "database.json").exists():
        # Its database is its PostgreSQL member, which serve starts: serve prepares the node.
        sizes.append("--prepare")
    else:
        env.manage("migrate", "--noinput")
        env.manage("tls_ensure")
    env.spawn([sys.executable, str(REPO / "manage.py"), "serve", *sizes], "serve")
    base = f"https://{host}:{port}"

    def answers():
        try:
            return https_get(base + "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    wait_for(answers, timeout=60, what=f"the console at {base}")
    return base
