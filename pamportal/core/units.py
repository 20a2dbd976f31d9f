"""The node's processes, described once: their command lines, environment and start
conditions. ``manage.py serve`` (the development runner) starts them from here, and
``manage.py install_units`` writes them as systemd units from here, so the two can
never run different command lines.

Processes (unit name in brackets):

- ``web`` (``pamportal-web.service``): the HTTPS console, gunicorn;
- ``worker`` (``pamportal-worker.service``): the Celery worker with its beat;
- ``setup-api`` and ``delegation`` (``pamportal-setup-api.service``,
  ``pamportal-delegation.service``): the cluster listeners, once the cluster CA exists;
- ``etcd`` (``pamportal-etcd.service``): this node's etcd member, once the CA and its
  member configuration exist, started by ``manage.py run_etcd`` (which execs the
  command line of ``pamportal.cluster.etcd_process``).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

APP_DIR = Path(__file__).resolve().parents[2]
MANAGE_PY = APP_DIR / "manage.py"
GUNICORN_CONFIG = APP_DIR / "pamportal" / "gunicorn_conf.py"
# OpenSSL cipher list for TLS 1.2: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
CA_FILE_NAME = "cluster-ca.crt"  # beside the node certificate (nodes.services.ca_cert_path)
MEMBER_CONFIG = Path("etcd") / "member.json"  # under the data dir (cluster.local_etcd.config_path)
UNIT_PREFIX = "pamportal"


@dataclass(frozen=True, kw_only=True)
class NodeLayout:
    """Where a node's files are and what it listens on: everything its command lines
    depend on. ``from_settings()`` is this process's node; with ``data_dir`` (and
    ports) another node's, e.g. the one ``install_units`` writes units for."""

    python: str
    app_dir: Path
    data_dir: Path
    bind: str
    https_port: int
    setup_api_port: int
    delegation_api_port: int
    queue: str
    tls_cert: Path
    tls_key: Path
    beat_schedule: Path

    @classmethod
    def from_settings(cls, *, data_dir: Path | None = None, python: str | None = None,
                      app_dir: Path | None = None, **overrides) -> NodeLayout:
        """The layout of this process's settings; with ``data_dir``, the same layout
        moved under that data dir (every data-dir path re-rooted)."""
        own = Path(settings.PAM_DATA_DIR)
        root = Path(data_dir) if data_dir is not None else own

        def moved(path) -> Path:
            path = Path(path)
            try:
                return root / path.relative_to(own)
            except ValueError:  # configured outside the data dir: as configured
                return path

        values = dict(
            python=python or sys.executable,
            app_dir=Path(app_dir) if app_dir is not None else APP_DIR,
            data_dir=root,
            bind=settings.PAM_BIND_ADDRESS,
            https_port=settings.PAM_HTTPS_PORT,
            setup_api_port=settings.PAM_SETUP_API_PORT,
            delegation_api_port=settings.PAM_DELEGATION_API_PORT,
            queue=settings.CELERY_TASK_DEFAULT_QUEUE,
            tls_cert=moved(settings.PAM_TLS_CERT),
            tls_key=moved(settings.PAM_TLS_KEY),
            beat_schedule=moved(settings.CELERY_BEAT_SCHEDULE_FILENAME),
        )
        values.update(overrides)
        return cls(**values)

    @property
    def ca_cert(self) -> Path:
        return self.tls_cert.with_name(CA_FILE_NAME)

    @property
    def member_config(self) -> Path:
        return self.data_dir / MEMBER_CONFIG

    def bind_to(self, port: int) -> str:
        return f"[{self.bind}]:{port}" if ":" in self.bind else f"{self.bind}:{port}"

    def environment(self) -> dict[str, str]:
        """The settings a unit's process needs so that its Django agrees with the
        command line (``serve``'s children inherit them from serve instead)."""
        env = {
            "PAM_DATA_DIR": str(self.data_dir),
            "PAM_BIND_ADDRESS": self.bind,
            "PAM_HTTPS_PORT": str(self.https_port),
            "PAM_SETUP_API_PORT": str(self.setup_api_port),
            "PAM_DELEGATION_API_PORT": str(self.delegation_api_port),
            "PAM_CELERY_QUEUE": self.queue,
        }
        return env


@dataclass(frozen=True, kw_only=True)
class NodeProcess:
    name: str
    description: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Start only once these files exist (systemd: ConditionPathExists=).
    requires_files: tuple[Path, ...] = ()
    # Without it the node is down: serve stops the node when it exits.
    essential: bool = False
    # Binds a port below 1024 (CAP_NET_BIND_SERVICE for an unprivileged user).
    privileged_port: bool = False
    # Runs as this OS user instead of the node's (the PostgreSQL member: PostgreSQL
    # refuses root), in this working directory.
    user: str | None = None
    working_dir: Path | None = None
    # gunicorn: SIGHUP reloads the configuration and the certificate.
    reloads_on_hup: bool = False
    # What the process gets when serve dies without stopping it (PR_SET_PDEATHSIG):
    # the Celery worker a cold shutdown (SIGQUIT), not a warm one that could wait
    # for a long step with nobody left to cut it short.
    death_signal: int = signal.SIGTERM

    @property
    def unit(self) -> str:
        return f"{UNIT_PREFIX}-{self.name}.service"


def gunicorn_argv(layout: NodeLayout, port: int, workers: int, *extra: str) -> list[str]:
    return [
        layout.python, "-m", "gunicorn", "pamportal.wsgi:application",
        "--bind", layout.bind_to(port),
        "--certfile", str(layout.tls_cert), "--keyfile", str(layout.tls_key),
        # gunicorn's threaded worker, taking connections only with an idle thread
        # (pamportal/core/gthread.py: clients connecting at once spread over the workers).
        "--workers", str(workers), "--worker-class", "pamportal.core.gthread.BalancedThreadWorker",
        "--threads", "4",
        "--timeout", "60", "--access-logfile", "-", "--forwarded-allow-ips=",
        # TLS 1.2 with forward secrecy and AEAD only (TLS 1.3 suites are all AEAD);
        # the chain, TLS 1.2 minimum and no Server banner: GUNICORN_CONFIG.
        "--ciphers", TLS12_CIPHERS, "--config", str(GUNICORN_CONFIG),
        # gunicorn's default control socket is ~/.gunicorn/gunicorn.ctl, one for
        # every listener of every node on the host; the masters are driven with
        # signals, so none.
        "--no-control-socket",
        "--umask", "0o077",
        *extra,
    ]


def worker_argv(layout: NodeLayout, concurrency: int) -> list[str]:
    return [
        layout.python, "-m", "celery", "-A", "pamportal", "worker", "--beat",
        "--schedule", str(layout.beat_schedule),
        "--loglevel", "INFO", "--concurrency", str(concurrency),
        "-Q", layout.queue,
    ]


def etcd_argv(layout: NodeLayout) -> list[str]:
    """``manage.py run_etcd`` reads the member configuration when it starts and execs
    etcd (``etcd_process.command_line``): the configuration changes at run time (a
    join rewrites it), the command that reads it does not."""
    return [layout.python, str(layout.app_dir / "manage.py"), "run_etcd"]


def node_processes(layout: NodeLayout, *, workers: int = 2, concurrency: int = 2,
                   with_worker: bool = True) -> dict[str, NodeProcess]:
    """Every process of the node, in start order. THE one place their command lines
    are built: for ``serve`` and for the systemd units."""
    ca = layout.ca_cert
    processes = [
        NodeProcess(name="web", description="pamportal HTTPS console",
                    argv=gunicorn_argv(layout, layout.https_port, workers),
                    essential=True, privileged_port=layout.https_port < 1024, reloads_on_hup=True),
    ]
    if with_worker:
        processes.append(NodeProcess(name="worker", description="pamportal Celery worker and beat",
                                     argv=worker_argv(layout, concurrency), essential=True,
                                     death_signal=signal.SIGQUIT))
    processes += [
        NodeProcess(name="setup-api", description="pamportal cluster setup API",
                    argv=gunicorn_argv(layout, layout.setup_api_port, 1),
                    env={"PAM_LISTENER": "setup-api"}, requires_files=(ca,),
                    privileged_port=layout.setup_api_port < 1024, reloads_on_hup=True),
        NodeProcess(name="delegation", description="pamportal cluster delegation API (mutual TLS)",
                    # Mutual TLS: only clients with a certificate from the cluster CA.
                    argv=gunicorn_argv(layout, layout.delegation_api_port, 1,
                                       "--cert-reqs", "2", "--ca-certs", str(ca)),
                    env={"PAM_LISTENER": "delegation"}, requires_files=(ca,),
                    privileged_port=layout.delegation_api_port < 1024, reloads_on_hup=True),
        NodeProcess(name="etcd", description="pamportal etcd member",
                    argv=etcd_argv(layout), requires_files=(ca, layout.member_config)),
    ]
    member = _database_member(layout)
    if member is not None:
        processes.append(member)
    return {p.name: p for p in processes}


def _database_member(layout: NodeLayout) -> NodeProcess | None:
    """The node's PostgreSQL member under Patroni, once its database is that member
    (``<data dir>/database.json``, written by ``manage.py database_to_patroni`` or a
    join); like etcd, a life of its own: an app restart never restarts PostgreSQL."""
    from pamportal.replication.local import patroni_node_process

    member = patroni_node_process(data_dir=layout.data_dir)
    if member is None:
        return None
    return NodeProcess(name=member.name, description=member.description, argv=member.argv, env=member.env,
                       requires_files=member.requires_files, user=member.user, working_dir=member.working_dir,
                       death_signal=signal.SIGTERM)


# --- systemd -----------------------------------------------------------------------------
SYSTEMD_DIR = Path("/etc/systemd/system")
ENVIRONMENT_FILE = Path("/etc/pamportal/pamportal.env")
TARGET = f"{UNIT_PREFIX}.target"
CLUSTER_TARGET = f"{UNIT_PREFIX}-cluster.target"
CLUSTER_PATH = f"{UNIT_PREFIX}-cluster.path"
ETCD_PATH = f"{UNIT_PREFIX}-etcd.path"
PATRONI_PATH = f"{UNIT_PREFIX}-patroni.path"
CERT_PATH = f"{UNIT_PREFIX}-certificate.path"
RELOAD_SERVICE = f"{UNIT_PREFIX}-reload.service"
SYSTEMCTL = "/bin/systemctl"
KILL = "/bin/kill"

_UNSAFE = set('%$\\"\'\n')


def exec_line(argv: list[str]) -> str:
    """argv as an ExecStart= value: words with spaces or empty ones quoted. Characters
    systemd would expand or unescape (%, $, backslash, quotes) are refused rather than
    escaped, so that what the unit runs is exactly argv."""
    words = []
    for arg in argv:
        if _UNSAFE & set(arg):
            raise ValueError(f"cannot put {arg!r} on a systemd command line")
        words.append(f'"{arg}"' if (not arg or any(c.isspace() for c in arg)) else arg)
    return " ".join(words)


def _env_lines(env: dict[str, str]) -> list[str]:
    lines = []
    for key, value in env.items():
        if _UNSAFE & set(value) or any(c.isspace() for c in value):
            raise ValueError(f"cannot put {key}={value!r} in a unit")
        lines.append(f"Environment={key}={value}")
    return lines


def _hardening(layout: NodeLayout, process: NodeProcess) -> list[str]:
    # An unprivileged user with no capability but, for a port below 1024, binding it.
    caps = "CAP_NET_BIND_SERVICE" if process.privileged_port else ""
    return [
        f"CapabilityBoundingSet={caps}",
        f"AmbientCapabilities={caps}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        # The PostgreSQL member writes only its own directory (owned by its user).
        f"ReadWritePaths={process.working_dir or layout.data_dir}",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        # Not for PostgreSQL: removing its user's IPC objects when the unit stops is
        # PostgreSQL's documented way to be corrupted (shared memory of a live server).
        f"RemoveIPC={'no' if process.user else 'yes'}",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "UMask=0077",
    ]


HEADER = "# Written by `manage.py install_units`; run it again rather than editing this file."


def service_unit(layout: NodeLayout, process: NodeProcess, *, user: str, group: str) -> str:
    lines = [
        HEADER,
        "[Unit]",
        f"Description={process.description}",
        "After=network-online.target",
        "Wants=network-online.target",
        # Keep retrying, as serve does (with RestartSec= between attempts).
        "StartLimitIntervalSec=0",
    ]
    if process.name not in ("etcd", "patroni"):
        # Stopping or restarting the node's target stops or restarts the app; the etcd
        # and PostgreSQL members have lifecycles of their own (no app restart ever
        # restarts them).
        lines.append(f"PartOf={TARGET}")
    lines += [f"ConditionPathExists={path}" for path in process.requires_files]
    lines += [
        "",
        "[Service]",
        "Type=exec",
        f"User={process.user or user}",
        f"Group={process.user or group}",
        f"WorkingDirectory={process.working_dir or layout.app_dir}",
        # Local settings (SECRET_KEY, DATABASE_URL, CELERY_BROKER_URL, PAM_NODE_ADDRESS).
        # The data dir, bind address and ports are set below, matching the command line.
        f"EnvironmentFile=-{ENVIRONMENT_FILE}",
        "Environment=PAM_ENV=production",
        "Environment=PYTHONUNBUFFERED=1",
        *_env_lines({**layout.environment(), **process.env}),
    ]
    if process.working_dir is not None:
        lines.append(f"Environment=HOME={process.working_dir}")
    if process.name == "web":
        # The console's certificate (self-signed until setup, else from the database).
        lines.append(f"ExecStartPre={exec_line([layout.python, str(layout.app_dir / 'manage.py'), 'tls_ensure'])}")
    lines.append(f"ExecStart={exec_line(process.argv)}")
    if process.reloads_on_hup:
        lines.append(f"ExecReload={KILL} -HUP $MAINPID")
    lines += ["Restart=on-failure", "RestartSec=5s" if process.name == "etcd" else "RestartSec=2s"]
    if process.name == "worker":
        # A warm shutdown for running steps, then the rest is killed, as serve does;
        # leases and idempotent steps make that safe.
        lines += ["KillMode=mixed", "TimeoutStopSec=10s"]
    if process.name == "etcd":
        lines += ["LimitNOFILE=65536", "TimeoutStopSec=30s"]
    if process.name == "patroni":
        # Patroni stops PostgreSQL (fast shutdown) before it exits.
        lines += ["KillMode=mixed", "TimeoutStopSec=60s"]
    lines += _hardening(layout, process)
    return "\n".join(lines) + "\n"


def _unit(*sections: list[str]) -> str:
    lines = [HEADER]
    for section in sections:
        lines += [*section, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_units(layout: NodeLayout, *, user: str, group: str | None = None, workers: int = 2,
                 concurrency: int = 2) -> dict[str, str]:
    """Every unit file of the node: file name -> text.

    ``pamportal.target`` (the one unit to enable) wants the console, the worker and
    three path units: the cluster CA appearing starts ``pamportal-cluster.target``
    (the setup and delegation APIs), the member configuration appearing starts the
    etcd member, and the certificate changing reloads the listeners."""
    processes = node_processes(layout, workers=workers, concurrency=concurrency)
    units = {p.unit: service_unit(layout, p, user=user, group=group or user) for p in processes.values()}
    always = [p.unit for p in processes.values() if not p.requires_files]
    listeners = [p.unit for p in processes.values() if p.requires_files and p.name not in ("etcd", "patroni")]
    reloadable = [p.unit for p in processes.values() if p.reloads_on_hup]

    def path_unit(description: str, condition: str, path: Path, unit: str, part_of: bool = True) -> str:
        return _unit(["[Unit]", f"Description={description}", *([f"PartOf={TARGET}"] if part_of else [])],
                     ["[Path]", f"{condition}={path}", f"Unit={unit}"])

    paths = [CLUSTER_PATH, ETCD_PATH, CERT_PATH]
    if "patroni" in processes:
        # The database member (install_units again after database_to_patroni): started
        # while database.json exists, before the console and the worker.
        member = processes["patroni"]
        units[PATRONI_PATH] = path_unit("Start the pamportal PostgreSQL member once the node's database is it",
                                        "PathExists", member.requires_files[0], member.unit, part_of=False)
        paths.append(PATRONI_PATH)
        for name in always:
            units[name] = units[name].replace("After=network-online.target",
                                              f"After=network-online.target {member.unit}", 1)
    units[TARGET] = _unit(
        ["[Unit]", "Description=pamportal node (console, worker; cluster listeners and etcd once configured)",
         f"Wants={' '.join([*always, *paths])}"],
        ["[Install]", "WantedBy=multi-user.target"],
    )
    units[CLUSTER_TARGET] = _unit(
        ["[Unit]", "Description=pamportal cluster listeners (setup API, delegation API)",
         f"Wants={' '.join(listeners)}", f"PartOf={TARGET}"],
    )
    units[CLUSTER_PATH] = path_unit("Start the pamportal cluster listeners once the cluster CA exists",
                                    "PathExists", layout.ca_cert, CLUSTER_TARGET)
    units[ETCD_PATH] = path_unit("Start the pamportal etcd member once it is configured",
                                 "PathExists", layout.member_config, processes["etcd"].unit, part_of=False)
    units[CERT_PATH] = path_unit("Reload the pamportal listeners when the certificate is replaced",
                                 "PathChanged", layout.tls_cert, RELOAD_SERVICE)
    units[RELOAD_SERVICE] = _unit(
        ["[Unit]", "Description=Reload the pamportal listeners (new TLS certificate)"],
        ["[Service]", "Type=oneshot",
         # The key and the certificate are written one after the other: let them settle.
         "ExecStartPre=/bin/sleep 1",
         # Reload what runs (gunicorn: SIGHUP); start nothing that is stopped.
         f"ExecStart={SYSTEMCTL} try-reload-or-restart {' '.join(reloadable)}"],
    )
    return units
