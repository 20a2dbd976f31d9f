"""One node's PostgreSQL member on disk and as a process: its directories, its copies of
the node's TLS files, its Patroni configuration file, and Patroni itself, run as the
``postgres`` user (PostgreSQL refuses root) from Patroni's own venv
(tools/patroni_env.sh).

Layout under the base (``PAM_POSTGRES_BASE``, default /var/lib/pamportal/pg), one
directory per member, owned by the member's OS user, 0700::

    <base>/<member>/patroni.yml   the configuration (config.render)
    <base>/<member>/data/         PGDATA (initdb or pg_basebackup create it, 0700)
    <base>/<member>/run/          the unix socket, private to the member
    <base>/<member>/tls/          ca.crt, node.crt, node.key (0600)
    <base>/<member>/patroni.log   Patroni's and PostgreSQL's output

The node's own TLS files stay in its data dir (0700 root); postgres reads copies.

Patroni starts the postmaster in a session of its own (so that Patroni can restart
without taking PostgreSQL down), so stopping a member is: SIGTERM to Patroni, which
shuts PostgreSQL down; when that does not finish in time, SIGKILL to Patroni's process
group and to the postmaster's (found through ``postmaster.pid``).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .config import TLSFiles

logger = logging.getLogger(__name__)

DEFAULT_VENV = Path("/opt/pamportal/patroni")
_MEMBER_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class PatroniNotInstalled(RuntimeError):
    def __init__(self, path: Path):
        super().__init__(
            f"Patroni was not found at {path}; build its environment with `bash tools/patroni_env.sh` "
            f"as root (or set PAM_PATRONI_VENV)"
        )


def patroni_venv() -> Path:
    return Path(os.environ.get("PAM_PATRONI_VENV") or DEFAULT_VENV)


def patroni_binary() -> Path:
    path = patroni_venv() / "bin" / "patroni"
    if not os.access(path, os.X_OK):
        raise PatroniNotInstalled(path)
    return path


@dataclass(frozen=True)
class RunAs:
    """The OS user a member runs as: ``postgres`` when we are root, otherwise
    ourselves (a developer's non-root run). PostgreSQL's superuser gets this name too,
    so that ``peer`` authentication on the private socket matches."""

    user: str
    uid: int
    gid: int

    @property
    def switches_user(self) -> bool:
        return self.uid != os.geteuid()

    @classmethod
    def for_this_process(cls) -> RunAs:
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
        else:
            entry = pwd.getpwuid(os.geteuid())
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class MemberPaths:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "patroni.yml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def pgpass(self) -> Path:
        return self.root / "pgpass"

    @property
    def log_file(self) -> Path:
        return self.root / "patroni.log"

    @property
    def tls(self) -> TLSFiles:
        """The member's copies of the TLS files (what its configuration names)."""
        return TLSFiles(ca_file=self.tls_dir / "ca.crt", cert_file=self.tls_dir / "node.crt",
                        key_file=self.tls_dir / "node.key")


def member_paths(base: Path | str, member_name: str) -> MemberPaths:
    if not _MEMBER_DIR.match(member_name):
        raise ValueError(f"bad member name {member_name!r}")
    return MemberPaths(Path(base) / member_name)


def default_base() -> Path:
    from django.conf import settings

    return Path(settings.PAM_POSTGRES_BASE)


def _chown(path: Path, run_as: RunAs) -> None:
    if run_as.switches_user:
        os.chown(path, run_as.uid, run_as.gid)


def _can_traverse(path: Path, run_as: RunAs) -> bool:
    st = path.stat()
    if run_as.uid == 0:
        return True
    if st.st_uid == run_as.uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == run_as.gid or st.st_gid in os.getgrouplist(run_as.user, run_as.gid):
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _base_ensure(base: Path, run_as: RunAs) -> None:
    """The base must let the member's user through, and so must every parent: pytest's
    temporary dirs and /root are 0700, and PostgreSQL then cannot reach its data dir.
    The base itself we open (0711: through, not list); a parent we only check."""
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    if base.stat().st_uid == os.geteuid() and not _can_traverse(base, run_as):
        os.chmod(base, base.stat().st_mode | 0o711)
    for path in [base, *base.parents]:
        if not _can_traverse(path, run_as):
            raise PermissionError(
                f"{run_as.user} cannot reach {path} (mode {path.stat().st_mode & 0o7777:o}); put PostgreSQL "
                f"members under a path it can traverse (PAM_POSTGRES_BASE, default /var/lib/pamportal/pg)"
            )


def member_prepare(*, paths: MemberPaths, tls_source: TLSFiles, run_as: RunAs | None = None) -> TLSFiles:
    """Create the member's directories and copy the node's TLS files into them, owned
    by the member's user (key 0600, as PostgreSQL and libpq require). Safe to run again:
    the copies are refreshed (a renewed certificate), the data dir is left alone.
    Returns the member's TLS files."""
    run_as = run_as or RunAs.for_this_process()
    _base_ensure(paths.root.parent, run_as)
    for directory in (paths.root, paths.socket_dir, paths.tls_dir):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        _chown(directory, run_as)
    member_tls = paths.tls
    copies = [(tls_source.ca_file, member_tls.ca_file, 0o644), (tls_source.cert_file, member_tls.cert_file, 0o644),
              (tls_source.key_file, member_tls.key_file, 0o600)]
    if tls_source.crl_file:
        crl = paths.tls_dir / "ca.crl"
        copies.append((tls_source.crl_file, crl, 0o644))
        member_tls = TLSFiles(ca_file=member_tls.ca_file, cert_file=member_tls.cert_file,
                              key_file=member_tls.key_file, crl_file=crl)
    for source, target, mode in copies:
        temporary = target.with_name(f".{target.name}.new")
        temporary.unlink(missing_ok=True)  # left by an interrupted run, maybe with other modes
        # created with its final mode, so a key is never readable by others, even briefly
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(Path(source).read_bytes())
        os.chmod(temporary, mode)
        _chown(temporary, run_as)
        os.replace(temporary, target)
    return member_tls


def member_config_write(*, paths: MemberPaths, text: str, run_as: RunAs | None = None) -> Path:
    """Write the member's configuration (0600: it names the key file)."""
    run_as = run_as or RunAs.for_this_process()
    temporary = paths.config_file.with_name(".patroni.yml.new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    _chown(temporary, run_as)
    os.replace(temporary, paths.config_file)
    return paths.config_file


def _environment(paths: MemberPaths, run_as: RunAs) -> dict[str, str]:
    """A clean environment: no PG* variables of ours (libpq would pick them up), no
    PATRONI_* overrides, HOME in the member's dir so libpq finds nothing of root's."""
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "TZ", "LANG", "LC_ALL") and v}
    keep.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    keep.setdefault("LANG", "C.UTF-8")
    keep.update({"HOME": str(paths.root), "USER": run_as.user, "LOGNAME": run_as.user})
    return keep


@dataclass
class PatroniProcess:
    """A running Patroni (and, through it, PostgreSQL) for one member."""

    name: str
    paths: MemberPaths
    popen: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def member_start(*, name: str, paths: MemberPaths, run_as: RunAs | None = None,
                 patroni: Path | None = None) -> PatroniProcess:
    """Start Patroni on the member's configuration, as the member's user, in its own
    process group, output appended to ``patroni.log``. It gets SIGTERM if this process
    dies (PR_SET_PDEATHSIG, as serve's children do), and then stops PostgreSQL itself."""
    from pamportal.core.management.commands.serve import die_with_parent

    run_as = run_as or RunAs.for_this_process()
    binary = patroni or patroni_binary()
    if not paths.config_file.exists():
        raise FileNotFoundError(f"no Patroni configuration at {paths.config_file}")
    switch: dict = {}
    if run_as.switches_user:
        switch = {"user": run_as.uid, "group": run_as.gid,
                  "extra_groups": os.getgrouplist(run_as.user, run_as.gid)}
    fd = os.open(paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        _chown(paths.log_file, run_as)
        popen = subprocess.Popen(
            [str(binary), str(paths.config_file)],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, cwd=paths.root,
            env=_environment(paths, run_as), start_new_session=True, close_fds=True,
            # after the switch of user (which would clear the death signal)
            preexec_fn=die_with_parent(os.getpid()), **switch,
        )
    finally:
        os.close(fd)
    logger.info("patroni %s started (pid %s) on %s", name, popen.pid, paths.config_file)
    return PatroniProcess(name=name, paths=paths, popen=popen)


def postmaster_pid(data_dir: Path) -> int | None:
    """The running postmaster of ``data_dir``, or None. Checked against /proc, so a pid
    reused by another program is never taken for it."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not cmdline or not cmdline[0].endswith((b"postgres", b"postmaster")):
        return None
    return pid


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        pass


def member_kill(process: PatroniProcess) -> None:
    """SIGKILL Patroni and PostgreSQL at once: what a crash of the node looks like."""
    pm = postmaster_pid(process.paths.data_dir)
    if process.alive():
        _killpg(process.pid, signal.SIGKILL)
    if pm:
        _killpg(pm, signal.SIGKILL)
    try:
        process.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.warning("patroni %s (pid %s) did not die on SIGKILL", process.name, process.pid)
    _wait_gone(pm, 10)


def _wait_gone(pid: int | None, timeout: float) -> bool:
    if not pid:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        try:
            # reap it if it happens to be our child; otherwise its parent does
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        status = Path(f"/proc/{pid}/status")
        try:
            if "\nState:\tZ" in status.read_text():
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def member_stop(process: PatroniProcess, *, timeout: float = 30.0) -> int | None:
    """Stop the member: SIGTERM to Patroni, which shuts PostgreSQL down (fast) and exits;
    whatever is left after ``timeout`` seconds is SIGKILLed, Patroni's group and the
    postmaster's. Returns Patroni's exit code."""
    pm = postmaster_pid(process.paths.data_dir)
    if process.alive():
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("patroni %s did not stop in %gs: killing it", process.name, timeout)
    pm = postmaster_pid(process.paths.data_dir) or pm
    if process.alive() or (pm and not _wait_gone(pm, 5)):
        member_kill(process)
    # Patroni's helpers (pg_basebackup, pg_rewind) live in its process group, whose id
    # is Patroni's pid (a session of its own).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return process.popen.returncode


def member_remove(paths: MemberPaths) -> None:
    """Delete the member's directory (data, configuration, TLS copies). Stop it first:
    a running postmaster is refused rather than pulled out from under."""
    if postmaster_pid(paths.data_dir):
        raise RuntimeError(f"PostgreSQL is still running on {paths.data_dir}; stop the member first")
    shutil.rmtree(paths.root, ignore_errors=True)
