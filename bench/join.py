"""Join benchmark (run on demand, not part of the suite).

    .venv/bin/python bench/join.py [--joins N]

For each of N joins (default 3): a fresh leader on 127.0.0.31 and a fresh follower on
127.0.0.32 (each its own data dir, database, worker and etcd member, started as the
multi-node test starts them), the leader finalised, a bundle generated, opened and
checked on the follower, the join requested and approved by two approvers, all through
the services. Timed from the moment the LAST approval vote returns on the leader to

  (a) the leader's ClusterMember for the follower being active AND its etcd member
      being a started voter (etcd's own member list), and
  (b) the follower's FollowerJoin being 'joined'.

A watcher inside each node's Django polls every 50 ms from before the first vote, so
the timings are not inflated by starting a Django process after the vote.

The baseline, measured in the same run on 127.0.0.33: etcd alone doing what the join
does with it (member add as a learner → start the member with state existing → wait
until it is healthy and in sync → promote), with a throwaway CA, once per join. Prints
each run, the median and the worst, and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LEADER, FOLLOWER, BASELINE_ADDRESS = "127.0.0.31", "127.0.0.32", "127.0.0.33"
WATCH_TIMEOUT = 180


def _setup_django(scratch: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamportal.settings_test")
    os.environ["PAM_DATA_DIR"] = str(scratch)
    import django

    django.setup()


# --- one join ----------------------------------------------------------------------------
def _watch(env, code: str, ready: Path, out: dict, key: str) -> threading.Thread:
    """Run ``code`` in the node in a thread; it touches ``ready`` once it polls."""
    from tests.support.cluster import run

    def target():
        try:
            out[key] = run(env, f"ready_file = {str(ready)!r}\n" + code)
        except BaseException as exc:  # reported by the caller
            out[key] = {"error": repr(exc)}

    thread = threading.Thread(target=target, name=f"watch-{key}", daemon=True)
    thread.start()
    return thread


LEADER_WATCH = f"""
import time
from pathlib import Path
from pamportal.cluster.connections import etcd_client, member_peer_url
from pamportal.cluster.models import ClusterMember
url = member_peer_url({FOLLOWER!r})
active_at = voter_at = None
deadline = time.time() + {WATCH_TIMEOUT}
Path(ready_file).touch()
while time.time() < deadline and not (active_at and voter_at):
    now = time.time()
    if active_at is None and ClusterMember.objects.filter(address={FOLLOWER!r}, state="active").exists():
        active_at = now
    if voter_at is None:
        try:
            members = etcd_client(timeout=2).member_list()
        except Exception:
            members = []
        if any(url in m.peer_urls and m.is_voter and m.started for m in members):
            voter_at = now
    time.sleep(0.05)
result = {{"active": active_at, "voter": voter_at}}
"""

FOLLOWER_WATCH = """
import time
from pathlib import Path
from pamportal.cluster.follower_selectors import join_current
joined_at = failure = None
deadline = time.time() + %d
Path(ready_file).touch()
while time.time() < deadline:
    now = time.time()
    j = join_current()
    if j is not None and j.state == "joined":
        joined_at = now
        break
    if j is not None and j.state == "failed":
        failure = j.failure_reason
        break
    time.sleep(0.05)
result = {"joined": joined_at, "failure": failure}
""" % WATCH_TIMEOUT


def one_join(index: int, root: Path, ntp: str) -> dict:
    import base64

    from tests.support.cluster import USERS, cluster_node, finalise_leader, run, start
    from tests.support.node import wait_for

    work = root / f"join-{index}"
    nodes = {}
    try:
        nodes = {address: cluster_node(work, address, ntp) for address in (LEADER, FOLLOWER)}
        leader, follower = nodes[LEADER], nodes[FOLLOWER]
        for address, env in nodes.items():
            start(env, address)
        mek_text = finalise_leader(leader, LEADER, ntp)
        wait_for(lambda: run(leader, """
from pamportal.cluster.connections import etcd_client
ok, _ = etcd_client().health()
result = ok
"""), timeout=60, interval=1, what="the leader's etcd member")

        bundle_id = run(leader, USERS + f"""
from pamportal.cluster import bundles as cs
user('approver-1', Role.APPROVER); user('approver-2', Role.APPROVER)
result = str(cs.bundle_generate(user=user('operator', Role.OPERATOR), follower_address={FOLLOWER!r}).bundle_id)
""")
        data = wait_for(lambda: run(leader, USERS + f"""
import base64
from pamportal.cluster import bundles as cs
from pamportal.cluster.models import JoiningBundle
b = JoiningBundle.objects.get(bundle_id={bundle_id!r})
result = base64.b64encode(cs.bundle_download(user=user('operator', Role.OPERATOR), bundle_id=b.bundle_id).data).decode() if b.file else None
"""), timeout=60, interval=0.5, what="the bundle job")
        bundle_path = work / "follower.bundle"
        bundle_path.write_bytes(base64.b64decode(data))

        run(follower, USERS + f"""
from pathlib import Path
from pamportal.cluster import follower as j
admin = user('admin', Role.ADMINISTRATOR)
j.join_bundle_open(user=admin, data=Path({str(bundle_path)!r}).read_bytes(), mek_text={mek_text!r}, own_address={FOLLOWER!r})
checked = j.join_preflight(user=admin)
assert checked.state == "checked", checked.preflight
result = j.join_request_send(user=admin).request_id
""")
        request_pk = run(leader, f"""
from pamportal.cluster.models import JoinRequest
result = JoinRequest.objects.get(follower_address={FOLLOWER!r}, state="pending").pk
""")

        # The watchers poll from before the first vote.
        watched: dict = {}
        ready = [work / "leader-watch.ready", work / "follower-watch.ready"]
        threads = [_watch(leader, LEADER_WATCH, ready[0], watched, "leader"),
                   _watch(follower, FOLLOWER_WATCH, ready[1], watched, "follower")]
        wait_for(lambda: all(p.exists() for p in ready) or watched, timeout=60, what="the watchers")

        vote_returned = None
        for approver in ("approver-1", "approver-2"):
            vote_returned = run(leader, USERS + f"""
import time
from pamportal.cluster import requests as cs
a = user({approver!r}, Role.APPROVER)
r = cs.join_request_vote(request_id={request_pk}, user=a, decision="approve", totp_code=code(a, 0))
result = [time.time(), r.state]
""")
        last_vote_at, state_after = vote_returned
        for thread in threads:
            thread.join(timeout=WATCH_TIMEOUT + 60)
        lw, fw = watched.get("leader") or {}, watched.get("follower") or {}
        if "error" in lw or "error" in fw or fw.get("failure") or not (lw.get("active") and lw.get("voter")
                                                                         and fw.get("joined")):
            raise RuntimeError(f"join {index} did not complete: leader {lw}, follower {fw}\n"
                               f"leader worker log tail:\n{leader.log('serve')[-3000:]}")
        return {
            "state_after_vote": state_after,
            "leader_active": lw["active"] - last_vote_at,
            "leader_voter": lw["voter"] - last_vote_at,
            "leader": max(lw["active"], lw["voter"]) - last_vote_at,
            "follower": fw["joined"] - last_vote_at,
        }
    finally:
        for env in nodes.values():
            env.stop()


# --- the baseline: etcd alone -------------------------------------------------------------
class EtcdBaseline:
    """A one-member etcd on 127.0.0.33 that learners join and leave."""

    def __init__(self, root: Path):
        from pamportal.cluster import etcd_process
        from tests.cluster import etcd_support
        from tests.cluster.etcd_support import EtcdTestClient, ThrowawayCA, pick_ports

        self.em = etcd_process
        self.support = etcd_support
        self.root = root
        self.ca = ThrowawayCA(root / "ca")
        names = etcd_process.certificate_addresses(BASELINE_ADDRESS)
        self.node = self.ca.issue("node", names)
        self.client_cert = self.ca.issue("client", [], server=False, client=True)
        self.procs = []
        cport, pport = pick_ports(BASELINE_ADDRESS)
        cfg = self._config("base", cport, pport, f"base={etcd_process.peer_url(BASELINE_ADDRESS, pport)}", "new")
        proc = self._start(cfg)
        self.client = EtcdTestClient([cfg.client_url], str(self.ca.ca_file), str(self.client_cert.cert_file),
                                     str(self.client_cert.key_file), timeout=5)
        etcd_support.wait_healthy(self.client, timeout=30, proc=proc)

    def _config(self, name, cport, pport, initial_cluster, state):
        return self.em.MemberConfig(
            name=name, address=BASELINE_ADDRESS, client_port=cport, peer_port=pport, data_dir=self.root / name,
            ca_file=self.ca.ca_file, cert_file=self.node.cert_file, key_file=self.node.key_file,
            initial_cluster=initial_cluster, initial_state=state, initial_cluster_token="pamportal-bench",
        )

    def _start(self, cfg):
        proc = self.support.start(cfg, self.root / f"{cfg.name}.log")
        self.procs.append(proc)
        return proc

    def learner_cycle(self, index: int) -> float:
        """Seconds for: member add (learner) → start → healthy and in sync → promote → voter."""
        from tests.cluster.etcd_support import pick_ports

        name = f"learner-{index}"
        cport, pport = pick_ports(BASELINE_ADDRESS, preferred=(22379, 22380))
        began = time.monotonic()
        new, members = self.client.member_add([self.em.peer_url(BASELINE_ADDRESS, pport)], learner=True, wait=10)
        cfg = self._config(name, cport, pport, self.em.initial_cluster_for_join(members, new.id, name), "existing")
        proc = self._start(cfg)
        self.support.wait_healthy(self.client, timeout=30, endpoint=cfg.client_url, proc=proc, interval=0.05)
        deadline = time.monotonic() + 30
        while not self.client.learner_in_sync(cfg.client_url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} never caught up")
            time.sleep(0.05)
        self.client.promote_when_ready(new.id, timeout=30, interval=0.05)
        while not any(m.id == new.id and m.is_voter and m.started for m in self.client.member_list()):
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        # Leave the cluster as it was for the next cycle.
        self.client.member_remove(new.id, wait=10)
        self.support.stop(proc)
        shutil.rmtree(cfg.data_dir, ignore_errors=True)
        return elapsed

    def stop(self):
        for proc in self.procs:
            self.support.stop(proc)


# --- report -------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=3, help="how many joins to time (default 3)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pam-bench-join-"))
    _setup_django(root / "bench")
    from tests.preflight.support import SntpResponder

    results, baseline = [], []
    try:
        with SntpResponder() as sntp:
            for index in range(1, args.joins + 1):
                started = time.monotonic()
                r = one_join(index, root, sntp.address)
                results.append(r)
                print(f"join {index}: leader active + etcd voter {r['leader']:.2f} s "
                      f"(member active {r['leader_active']:.2f} s, etcd voter {r['leader_voter']:.2f} s); "
                      f"follower joined {r['follower']:.2f} s  [request {r['state_after_vote']} after the last vote;"
                      f" whole run {time.monotonic() - started:.0f} s]", flush=True)
        etcd = EtcdBaseline(root / "etcd-baseline")
        try:
            for index in range(1, args.joins + 1):
                baseline.append(etcd.learner_cycle(index))
                print(f"baseline {index}: etcd learner add → start → promote {baseline[-1]:.2f} s", flush=True)
        finally:
            etcd.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base_median, base_worst = statistics.median(baseline), max(baseline)
    print()
    print(f"{len(results)} joins on loopback, seconds from the last approval vote returning:")
    for key, label in (("leader", "(a) leader: member active and etcd voter"), ("follower", "(b) follower: joined")):
        values = [r[key] for r in results]
        median, worst = statistics.median(values), max(values)
        print(f"  {label:42s} median {median:6.2f}  worst {worst:6.2f}   "
              f"×{median / base_median:.1f} / ×{worst / base_worst:.1f} the baseline")
    print(f"  {'baseline: etcd alone (add learner → promote)':42s} median {base_median:6.2f}  worst {base_worst:6.2f}")


if __name__ == "__main__":
    main()
