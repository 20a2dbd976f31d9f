"""Leadership-change benchmark on real processes (run on demand, not part of the suite).

    .venv/bin/python bench/failover.py [--rounds 3] [--interval 0.02]

Starts three etcd members and three Patroni-managed PostgreSQL 15 members on
127.0.0.81-83 (tests/replication/support.py's Lab: cluster CA, TLS everywhere,
synchronous_mode), migrates the cluster's database through Django, and runs a client
process: Django configured as a moved node is (``database.json`` ->
``pamportal.replication.database.postgresql_settings`` listing all three members,
libpq multi-host, ``target_session_attrs=read-write``) appending audit events with
``pamportal.audit.services.audit_record`` in a loop, each its own transaction, and
reporting every acknowledged event (position, hash, time, the member it landed on).

Measured, median of ``--rounds`` each:
  * leader SIGKILL (its Patroni and PostgreSQL; its etcd stays) -> the client's first
    acknowledged write that started after the kill;
  * ``PatroniClient.switchover`` to the sync standby -> the client's first
    acknowledged write on the new leader.
Beside each: when Patroni's own view first showed the new leader running (the baseline
the Django side adds to), the longest gap between two acknowledged writes, and the
client's steady-state gap before the event. After every round, in a separate Django
process on the new leader: every event the client saw acknowledged so far is in the
chain with the same hash, and ``audit_chain_verify`` (what ``manage.py audit_verify``
runs) verifies the chain. The killed member is started again and must be streaming
before the next round. Aims (issue 11): failover <= 15 s, switchover <= 5 s.
Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ADDRESSES = {"n1": "127.0.0.81", "n2": "127.0.0.82", "n3": "127.0.0.83"}
FAILOVER_AIM = 15.0
SWITCHOVER_AIM = 5.0


# -- a Django process on the cluster's database --------------------------------------
def cluster_data_dir(lab, root: Path, names, *, label: str = "client") -> Path:
    """A node data dir whose ``database.json`` lists ``names`` (in that order) and whose
    TLS files are a fresh cluster-CA certificate: settings.py then builds DATABASES with
    ``replication.database.postgresql_settings``, exactly as on a moved node."""
    from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file

    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = root / "tls"
    tls.mkdir(exist_ok=True, mode=0o700)
    cert = lab.pki.issue(label, ["127.0.0.1"])
    shutil.copyfile(lab.pki.ca_file, tls / "cluster-ca.crt")
    shutil.copyfile(cert.cert_file, tls / "node.crt")
    shutil.copyfile(cert.key_file, tls / "node.key")
    os.chmod(tls / "node.key", 0o600)
    hosts = tuple(DatabaseHost(host=lab.addresses[n], port=lab.pg_ports[n][0]) for n in names)
    write_database_file(root, DatabaseFile(hosts=hosts, member=label))
    return root


def django_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_", "DJANGO_")) and k != "DATABASE_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="pamportal.settings", PAM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1",
        # no audit signing key on this bare database: the inline checkpoint every 1000
        # events would only log its failure (a savepoint, the append is unaffected)
        PAM_AUDIT_CHECKPOINT_EVERY="1000000000",
    )
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    out = subprocess.run([sys.executable, str(REPO / "manage.py"), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def cluster_healthy(lab, asked: str, names) -> str | None:
    """The leader's name when every one of ``names`` is up: one running leader, the
    others streaming, one of them the sync standby; else None."""
    view = lab.api(asked, timeout=3).cluster()
    leader = view.leader
    if leader is None or leader.state != "running":
        return None
    members = {m.name: m for m in view.members}
    if set(members) != set(names):
        return None
    if any(m.state != "streaming" for n, m in members.items() if n != leader.name):
        return None
    if len(names) > 1 and not any(m.is_sync_standby for m in view.members):
        return None
    return leader.name


# -- the client: appends through Django, reports every acknowledgement ---------------
def client_main(args) -> None:
    import django

    django.setup()
    from django.db import connection, transaction

    from pamportal.audit.actions import AuditAction
    from pamportal.audit.services import audit_record
    from pamportal.core.context import acting

    def emit(record: dict) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    stop = Path(args.stop_file)
    deadline = time.monotonic() + args.max_seconds
    n = 0
    with acting(actor_id=1, actor_name="bench", source_ip="127.0.0.1", request_id="0" * 32):
        while not stop.exists() and time.monotonic() < deadline:
            n += 1
            started = time.time()
            try:
                # what Django does around a request: drop an unusable connection first
                connection.close_if_unusable_or_obsolete()
                with transaction.atomic():
                    event = audit_record(action=AuditAction.LOGIN_SUCCEEDED, target="user:bench",
                                         details={"n": n})
                    host = connection.connection.info.host
                emit({"ack": event.position, "hash": event.hash, "start": started, "t": time.time(), "host": host})
            except Exception as exc:  # noqa: BLE001 — reported; the loop goes on
                emit({"err": type(exc).__name__, "msg": str(exc).strip()[:160], "start": started, "t": time.time()})
                try:
                    connection.close()
                except Exception:  # noqa: BLE001 — the connection is gone either way
                    pass
                time.sleep(args.retry)
            time.sleep(args.interval)


@dataclass
class Ack:
    position: int
    hash: str
    start: float
    t: float
    host: str


@dataclass
class Client:
    """The client process and what it has reported so far (read by a thread)."""

    env: dict[str, str]
    root: Path
    interval: float
    acks: list[Ack] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.stop_file = self.root / "client.stop"
        self.stop_file.unlink(missing_ok=True)
        self.stderr = open(self.root / "client.stderr", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--client", "--stop-file", str(self.stop_file),
             "--interval", str(self.interval), "--max-seconds", "3600"],
            cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if "ack" in record:
                    self.acks.append(Ack(record["ack"], record["hash"], record["start"], record["t"], record["host"]))
                else:
                    self.errors.append(record)

    def snapshot(self) -> tuple[list[Ack], list[dict]]:
        with self.lock:
            return list(self.acks), list(self.errors)

    def wait_ack(self, accept, timeout: float, what: str, poll=None) -> Ack:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the client exited ({self.proc.returncode}); see {self.root / 'client.stderr'}")
            with self.lock:
                found = next((a for a in self.acks if accept(a)), None)
            if found:
                return found
            if poll:
                poll()
            time.sleep(0.05)
        _, errors = self.snapshot()
        raise SystemExit(f"timed out after {timeout:g}s waiting for {what}; last client errors: {errors[-3:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.reader.join(timeout=5)
        self.stderr.close()


# -- the check: acknowledged events on the new leader, chain verified ----------------
def check_main(args) -> None:
    import django

    django.setup()
    from django.db import connection

    from pamportal.audit.models import AuditEvent
    from pamportal.audit.selectors import audit_chain_verify

    acked = dict(json.loads(Path(args.acks).read_text()))
    acked = {int(k): v for k, v in acked.items()}
    connection.ensure_connection()
    host = connection.connection.info.host
    stored: dict[int, str] = {}
    positions = sorted(acked)
    for i in range(0, len(positions), 5000):
        chunk = positions[i:i + 5000]
        stored.update(AuditEvent.objects.filter(position__in=chunk).values_list("position", "hash"))
    found = sum(1 for p, h in acked.items() if stored.get(p) == h)
    lost = sorted(p for p, h in acked.items() if stored.get(p) != h)
    result = audit_chain_verify()
    print(json.dumps({"host": host, "acknowledged": len(acked), "found": found, "lost": lost[:20], "lost_count": len(lost),
                      "ok": result.ok, "verified": result.verified, "head": result.last_position,
                      "reason": result.reason}))


def check_chain(env: dict[str, str], root: Path, acks: list[Ack]) -> dict:
    path = root / "acks.json"
    path.write_text(json.dumps([[a.position, a.hash] for a in acks]))
    out = subprocess.run([sys.executable, __file__, "--check", "--acks", str(path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"the check failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the rounds ----------------------------------------------------------------------
@dataclass
class Round:
    kind: str
    old: str
    new: str
    writable: float  # event -> first acknowledged write on the new leader
    patroni: float | None  # event -> Patroni's view shows the new leader running
    gap: float  # longest interval between two acknowledged writes around the event
    steady: float  # median interval between acknowledged writes in the 5 s before
    errors: int
    check: dict
    answered: float | None = None


def _steady_gap(acks: list[Ack], before: float) -> float:
    recent = [a.t for a in acks if before - 5 <= a.t <= before]
    gaps = [b - a for a, b in zip(recent, recent[1:])]
    return statistics.median(gaps) if gaps else float("nan")


def _longest_gap(acks: list[Ack], start: float, end: float) -> float:
    times = [a.t for a in acks if a.t <= end]
    before = [t for t in times if t <= start]
    window = ([before[-1]] if before else []) + [t for t in times if start < t <= end]
    return max((b - a for a, b in zip(window, window[1:])), default=float("nan"))


def wait_healthy(lab, names, timeout: float = 180) -> str:
    from tests.replication.support import wait_until

    live = [n for n in names if n in lab.members]
    state = {"i": 0}

    def healthy():
        state["i"] += 1
        return cluster_healthy(lab, live[state["i"] % len(live)], names)

    return wait_until(healthy, timeout, interval=0.3, what=f"{', '.join(names)} healthy (leader + streaming)")


def wait_client_on(client: Client, address: str, timeout: float = 60) -> None:
    since = time.time()
    client.wait_ack(lambda a: a.start >= since and a.host == address, timeout, f"the client writing on {address}")
    time.sleep(2)  # a few seconds of steady writes to compare with


class LeaderWatch:
    """Polls Patroni's view (from a member that stays up) until it names a running
    leader other than ``old``: when Patroni itself considered the change done."""

    def __init__(self, lab, asked: list[str], old: str, t0: float):
        self.lab, self.asked, self.old, self.t0 = lab, asked, old, t0
        self.seen: float | None = None
        self._last = 0.0

    def __call__(self) -> None:
        if self.seen is not None or time.monotonic() - self._last < 0.2:
            return
        self._last = time.monotonic()
        for name in self.asked:
            try:
                lead = self.lab.api(name, timeout=1).cluster().leader
            except Exception:  # noqa: BLE001 — not answering right now: ask again later
                continue
            if lead is not None and lead.name != self.old and lead.state == "running":
                self.seen = time.time() - self.t0
            return


def failover_round(lab, client: Client, names, env, root) -> Round:
    leader = wait_healthy(lab, names)
    survivors = [n for n in names if n != leader]
    wait_client_on(client, lab.addresses[leader])
    errors_before = len(client.snapshot()[1])
    t0 = time.time()
    lab.member_kill(leader)
    killed = time.time()
    watch = LeaderWatch(lab, survivors, leader, t0)
    first = client.wait_ack(lambda a: a.start >= killed, 120, "the first write after the kill", poll=watch)
    while watch.seen is None and time.time() - t0 < 150:
        watch()
        time.sleep(0.05)
    acks, errors = client.snapshot()
    new = next(n for n, a in lab.addresses.items() if a == first.host)
    result = Round("leader SIGKILL", leader, new, first.t - t0, watch.seen, _longest_gap(acks, t0, first.t),
                   _steady_gap(acks, t0), len(errors) - errors_before, check_chain(env, root, acks))
    if result.check["host"] != lab.addresses[new]:
        raise SystemExit(f"the check ran on {result.check['host']}, not on the new leader {new}")
    lab.member_start(leader)  # back as a replica (pg_rewind if it needs to)
    wait_healthy(lab, names)
    return result


def switchover_round(lab, client: Client, names, env, root) -> Round:
    leader = wait_healthy(lab, names)
    view = lab.api(leader).cluster()
    candidate = view.sync_standbys[0].name
    wait_client_on(client, lab.addresses[leader])
    errors_before = len(client.snapshot()[1])
    t0 = time.time()
    # Patroni answers the switchover once the candidate leads: that is its own figure
    answer = lab.api(leader, timeout=60).switchover(leader=leader, candidate=candidate)
    answered = time.time() - t0
    if candidate not in answer:
        raise SystemExit(f"unexpected switchover answer: {answer}")
    first = client.wait_ack(lambda a: a.start >= t0 and a.host == lab.addresses[candidate], 60,
                            f"the first write on {candidate}")
    acks, errors = client.snapshot()
    result = Round("switchover", leader, candidate, first.t - t0, answered, _longest_gap(acks, t0, first.t),
                   _steady_gap(acks, t0), len(errors) - errors_before, check_chain(env, root, acks), answered)
    if result.check["host"] != lab.addresses[candidate]:
        raise SystemExit(f"the check ran on {result.check['host']}, not on the new leader {candidate}")
    wait_healthy(lab, names)  # the old leader follows
    return result


def report(rounds: list[Round], timing, interval: float) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n3 Patroni members (PostgreSQL 15, synchronous_mode) on {', '.join(ADDRESSES.values())}; "
          f"TTL {timing.ttl} s, loop_wait {timing.loop_wait} s, retry_timeout {timing.retry_timeout} s; "
          f"client: audit_record through Django (libpq multi-host, read-write) every {interval * 1000:.0f} ms; "
          f"{os.cpu_count()} CPUs, load average {load} at the end (shared machine: expect noise)")
    print(f"{'round':<16} {'from>to':<8} {'writable s':>10} {'patroni s':>9} {'django+ s':>9} {'gap s':>7} "
          f"{'steady ms':>9} {'errors':>6} {'acked':>7} {'found':>7} {'lost':>5}  chain")
    for r in rounds:
        c = r.check
        patroni = f"{r.patroni:9.2f}" if r.patroni is not None else f"{'-':>9}"
        extra = f"{r.writable - r.patroni:9.2f}" if r.patroni is not None else f"{'-':>9}"
        chain = f"verified {c['verified']:,} (head {c['head']:,})" if c["ok"] else f"BROKEN: {c['reason']}"
        print(f"{r.kind:<16} {r.old + '>' + r.new:<8} {r.writable:10.2f} {patroni} {extra} {r.gap:7.2f} "
              f"{r.steady * 1000:9.0f} {r.errors:>6} {c['acknowledged']:>7,} {c['found']:>7,} {c['lost_count']:>5}  {chain}")
    print("patroni s: when Patroni's view first showed the new leader running (SIGKILL) or its switchover call "
          "answered (switchover: the client may write before the answer); django+ s: writable minus that; gap s: "
          "longest interval between two acknowledged writes; steady ms: median interval before the event")
    print()
    for kind, aim in (("leader SIGKILL", FAILOVER_AIM), ("switchover", SWITCHOVER_AIM)):
        figures = [r.writable for r in rounds if r.kind == kind]
        if not figures:
            continue
        median = statistics.median(figures)
        patroni = [r.patroni for r in rounds if r.kind == kind and r.patroni is not None]
        base = f"; Patroni's view alone {statistics.median(patroni):.2f} s" if patroni else ""
        verdict = "met" if median <= aim else "MISSED"
        print(f"{kind:<16} -> first write through Django: median {median:.2f} s of {len(figures)} "
              f"(min {min(figures):.2f}, max {max(figures):.2f}){base}; aim <= {aim:g} s: {verdict}")
    if any(r.kind == "leader SIGKILL" and r.writable > FAILOVER_AIM for r in rounds):
        print(f"  (a dead leader's key expires only after the TTL, {timing.ttl} s, Patroni 4's floor: "
              f"failover cannot beat ~TTL - loop_wait/2 plus the promotion)")
    lost = sum(r.check["lost_count"] for r in rounds)
    print(f"acknowledged events lost over all rounds: {lost}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind (median reported)")
    parser.add_argument("--interval", type=float, default=0.02, help="client pause between appends, seconds")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pam-bench-failover-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamportal.settings_test")
    os.environ["PAM_DATA_DIR"] = str(root / "scratch")
    import django

    django.setup()
    logging.getLogger("pamportal.replication").setLevel(logging.WARNING)  # "patroni n1 started ..."
    from tests.replication.support import Lab, missing_tools, wait_until

    missing = missing_tools()
    if missing:
        shutil.rmtree(root, ignore_errors=True)
        raise SystemExit(f"bench/failover.py cannot run here: {missing}")
    names = list(ADDRESSES)
    lab = Lab(root / "lab", addresses=ADDRESSES)
    client = None
    rounds: list[Round] = []
    try:
        lab.etcd_start()
        started = time.monotonic()
        lab.member_start("n1")
        lab.wait_leader("n1", "n1", timeout=120)
        wait_until(lambda: lab.connect("n1").execute("SELECT 1").fetchone(), 60, what="the application role on n1",
                   log=lambda: lab.log("n1"))
        for name in names[1:]:
            lab.member_start(name)
        wait_healthy(lab, names)
        print(f"cluster up in {time.monotonic() - started:.1f}s")
        data_dir = cluster_data_dir(lab, root / "client", names)
        env = django_env(data_dir)
        started = time.monotonic()
        manage(env, "migrate", "--verbosity", "0", "--skip-checks")
        print(f"migrated through Django in {time.monotonic() - started:.1f}s")
        client = Client(env, root, args.interval)
        client.start()
        for i in range(args.rounds):
            rounds.append(failover_round(lab, client, names, env, root))
            r = rounds[-1]
            print(f"  failover {i + 1}: {r.old}>{r.new} writable after {r.writable:.2f}s, lost {r.check['lost_count']}",
                  flush=True)
        for i in range(args.rounds):
            rounds.append(switchover_round(lab, client, names, env, root))
            r = rounds[-1]
            print(f"  switchover {i + 1}: {r.old}>{r.new} writable after {r.writable:.2f}s, "
                  f"lost {r.check['lost_count']}", flush=True)
        report(rounds, lab.timing, args.interval)
    finally:
        if client is not None:
            client.stop()
        try:
            lab.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if "--client" in sys.argv or "--check" in sys.argv:
        sub = argparse.ArgumentParser()
        sub.add_argument("--client", action="store_true")
        sub.add_argument("--check", action="store_true")
        sub.add_argument("--stop-file")
        sub.add_argument("--interval", type=float, default=0.02)
        sub.add_argument("--retry", type=float, default=0.05)
        sub.add_argument("--max-seconds", type=float, default=3600)
        sub.add_argument("--acks")
        sub_args = sub.parse_args()
        client_main(sub_args) if sub_args.client else check_main(sub_args)
    else:
        main()
