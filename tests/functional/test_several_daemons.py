"""Three daemons, one region: work shared through tooz on the stack's etcd.

Real parts: the stack's Cinder, etcd (tooz's etcd3gw driver) and
PostgreSQL (the shared journal, a schema of its own per test), and
libvirt's test driver inside the private libvirtd of tools/tinyguest, so
every daemon and the test see the same guests' freeze state. The only
fake is a slow API, injected at the HTTP boundary (tests/faultproxy.py)
to hold a freeze open long enough to kill its daemon in the middle of it.
"""

from __future__ import annotations

import collections
import datetime
import os
import pathlib
import signal
import textwrap
import time
import uuid

import libvirt
import pytest
import yaml
from tooz import hashring

from cinderbak import membership
from cinderbak.journal import Journal, states, steps
from cinderbak.workflow import resource_name
from tests import tinyguest as tg
from tests.faultproxy import FaultProxy
from tests.functional.conftest import Cinderbak, config_text, pg_schema_url
from tests.functional.test_daemon import Daemons, wait_until
from tests.functional.test_run_once import attach_to_server

pytestmark = pytest.mark.skipif(
    not os.environ.get("JOURNAL_TEST_PG_URL"),
    reason="JOURNAL_TEST_PG_URL names no PostgreSQL for the shared journal",
)

UTC = datetime.UTC
LEASE = 10
MAX_FREEZE = 20
SERVERS = 4
VOLUMES_PER_SERVER = 3
DOMAIN = """<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory>65536</memory><vcpu>1</vcpu>
  <os><type>hvm</type></os>
</domain>"""


@pytest.fixture
def pg_journal():
    """A journal URL on the stack's PostgreSQL, in a schema of its own."""
    with pg_schema_url(os.environ["JOURNAL_TEST_PG_URL"], "several") as url:
        yield url


@pytest.fixture
def daemons(tmp_path, clouds_env, cleanup):
    # Depends on cleanup so that daemons stop before volumes are deleted.
    started = Daemons(tmp_path, clouds_env)
    yield started
    started.kill_all()


@pytest.fixture(scope="module")
def shared_guests():
    """libvirt's test driver in a real libvirtd: one freeze state for
    every daemon. The test keeps a connection open, which keeps the
    driver's state alive."""
    tiny = tg.TinyGuest()
    tiny.ensure_up()
    uri = tiny.uri.replace("qemu+unix:///system", "test+unix:///default")
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(uri)
    yield uri, conn
    conn.close()


def _members(tag: str) -> list[str]:
    return [f"d{i}-{tag}" for i in range(1, 4)]


def _spread_servers(members: list[str]) -> list[str]:
    """Server ids whose freeze groups the ring spreads over all members
    (with 4 servers and 3 members, chance alone leaves one idle half the
    time): the ring is tooz's, as the daemons use it."""
    ring = hashring.HashRing([m.encode() for m in members])
    while True:
        servers = [str(uuid.uuid4()) for _ in range(SERVERS)]
        owners = {
            next(
                iter(ring.get_nodes(membership.partition_key(s, "").encode()))
            )
            for s in servers
        }
        if len(owners) == len(members):
            return servers


def _setup(stack, alice, make_volume, shared_guests, tag):
    _, conn = shared_guests
    members = _members(tag)
    servers = _spread_servers(members)
    domains = [
        conn.createXML(DOMAIN.format(name=f"several-{tag}-{i}", uuid=s))
        for i, s in enumerate(servers)
    ]
    policy = f"several-{tag}"
    volumes = collections.defaultdict(list)
    for server in servers:
        for _ in range(VOLUMES_PER_SERVER):
            volume = make_volume(alice, metadata={"cinderbak:policy": policy})
            attach_to_server(alice, volume.id, server)
            volumes[server].append(volume.id)
    return members, servers, domains, policy, volumes


def _write_configs(
    tmp_path,
    stack,
    uri,
    journal_url,
    members,
    policy,
    cloud,
    group,
    backend=None,
    **kw,
):
    deployment = f"ft-{uuid.uuid4().hex}"
    ceph_a, readonly = stack.ceph("a"), stack.readonly_user
    etcd_url = stack.raw["coordination_url"]
    paths = {}
    for member in members:
        text = config_text(
            tmp_path / member,
            deployment,
            f"host = {member}\nwrite_back_status = true\n",
            f"cloud = {cloud}\napi_retries = 2\napi_retry_max_wait = 1\n",
        ).replace(
            f"sqlite:///{tmp_path / member}/journal.sqlite", journal_url
        ) + textwrap.dedent(f"""\
            [coordination]
            backend_url = {(backend or {}).get(member, etcd_url)}
            group = {group}
            lease = {LEASE}
            check_interval = 1
            [volume_cluster]
            conf = {ceph_a.conf}
            user = {readonly.user}
            keyring = {readonly.keyring}
            pools = {ceph_a.pool}
            [consistency]
            quiescer = libvirt
            [libvirt]
            uri_template = {uri}
            [daemon]
            shutdown_timeout = 20
            expire_after_run = false
            [policy:{policy}]
            schedule = every {kw.get("every", "1m")}
            transfer_mode = volume
            quiesce = required
            max_freeze_seconds = {kw.get("max_freeze", 60)}
            misfire_grace_time = 5
            """)
        (tmp_path / member).mkdir(exist_ok=True)
        path = tmp_path / member / "cinderbak.conf"
        path.write_text(text)
        paths[member] = path
    return paths


class _Config:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path


def _start_together(daemons, paths, env, period=60):
    """Start every daemon about 25 s before a slot boundary (time to
    start and join; a slot they miss is ignored, and its runs end well
    before the next one) and wait until each sees all three in the
    group; return the time from which slots have the full ring (the last
    boundary before they all agreed)."""
    while not period - 28 <= time.time() % period <= period - 22:
        time.sleep(0.5)
    started = {m: daemons.start(_Config(p), **env) for m, p in paths.items()}

    def agreed(daemon) -> bool:
        return any(
            "coordination:" in line and all(m in line for m in paths)
            for line in daemon.output().splitlines()
        )

    wait_until(
        lambda: all(agreed(d) for d in started.values()),
        120,
        "every daemon seeing all three members",
        interval=0.5,
    )
    now = time.time()
    boundary = datetime.datetime.fromtimestamp(now - now % period, UTC)
    return started, boundary


def _slot_runs(journal: Journal, policy: str, slot):
    return [
        r
        for r in journal.runs(policy=policy, limit=10_000)
        if r.scheduled_at == slot
    ]


def _first_slot(journal: Journal, policy: str, after=None):
    """The first slot (after ``after``) in which volumes were backed up;
    slots recorded as missed at start-up have no volume runs."""
    slots = [
        r.scheduled_at
        for r in journal.runs(policy=policy, limit=10_000)
        if not r.target.startswith("*")
        and (after is None or r.scheduled_at > after)
    ]
    return min(slots, default=None)


def _backups_of_slot(admin, volume_id, policy, slot) -> list[str]:
    """Backups of the volume that the slot's runs made (named by run)."""
    name = resource_name(f"{policy}@{slot:%Y-%m-%dT%H:%M:%SZ}")
    return [
        b.id
        for b in admin.block_storage.backups(
            details=True, all_projects=True, volume_id=volume_id
        )
        if b.name == name
    ]


def _wait_settled(journal, policy, slot, volumes, timeout, what) -> None:
    """Wait until every run of the slot is final and every volume has
    one (finished or reported)."""

    def settled() -> bool:
        runs = _slot_runs(journal, policy, slot)
        return _final(runs) and {r.target for r in runs} >= volumes

    wait_until(settled, timeout, what, interval=1)


def _next_slot_settled(journal, policy, after, volumes, what):
    """The first slot after ``after`` with volume runs, once every volume
    has a final run in it; and its runs."""
    slot = wait_until(
        lambda: _first_slot(journal, policy, after=after), 150, what
    )
    _wait_settled(journal, policy, slot, volumes, 240, f"{what} settled")
    return slot, _slot_runs(journal, policy, slot)


def _wait_shares_settled(journal, policy, slot, what) -> None:
    """Wait until the slot's 12 volume runs and 3 shares are final."""

    def settled() -> bool:
        runs = _slot_runs(journal, policy, slot)
        return _final(runs) and len(runs) >= 12 + 3

    wait_until(settled, 240, what, interval=1)


def _final(runs) -> bool:
    return bool(runs) and all(r.is_final for r in runs)


def _proxied_clouds(stack, tmp_path, proxy) -> pathlib.Path:
    clouds = yaml.safe_load(pathlib.Path(stack.clouds_yaml).read_text())
    cloud = dict(clouds["clouds"]["localstack-cinderbak"])
    cloud["block_storage_endpoint_override"] = proxy.url + "/v3"
    clouds["clouds"]["proxied"] = cloud
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(clouds))
    path.chmod(0o600)
    return path


def _frozen_by(journal: Journal, member: str):
    return journal.frozen_servers(host=member)


def _etcd_proxy_url(stack, proxy) -> str:
    """The stack's coordination URL, through ``proxy``."""
    return stack.raw["coordination_url"].replace(
        f"{proxy.upstream_host}:{proxy.upstream_port}",
        f"127.0.0.1:{proxy.port}",
    )


def _held_within(journal, runs, limit) -> None:
    """Every freeze of these runs ended within ``limit`` seconds."""
    for run in runs:
        record = journal.get_run(run.id)
        for step in record.steps or ():
            if step.kind == steps.FREEZE and step.finished_at:
                thaw = [
                    s
                    for s in record.steps or ()
                    if s.kind == steps.THAW and s.target == step.target
                ]
                assert thaw, (run.target, "no thaw")
                held = (thaw[-1].finished_at - step.created_at).total_seconds()
                assert held <= limit, (run.target, held)


def test_three_daemons_share_slots_ride_out_etcd_and_thaw_a_killed_ones_guest(
    stack,
    alice,
    admin,
    make_volume,
    shared_guests,
    pg_journal,
    daemons,
    tmp_path,
    clouds_env,
):
    """Three daemons on one policy, four slots (one set-up for them all:
    creating volumes and joining the group cost more than a slot).

    1. etcd stopped while the slot runs, longer than a lease: the work is
       still spread over all three, every volume backed up once, no
       freeze outlasts max_freeze_seconds, nobody taken for dead.
    2. etcd back: the next slot runs normally (its shares noted).
    3. One daemon alone cut off from etcd (not from Cinder, its guests or
       the journal) across a slot: its journal heartbeat keeps it alive
       in the others' eyes, so it keeps its share, then joins again.
    4. The daemon holding a frozen guest is killed: a survivor thaws it
       within a lease and takes over its runs; no duplicate backup, no
       leaked snapshot.
    """
    tag = uuid.uuid4().hex[:6]
    uri, _ = shared_guests
    members, servers, domains, policy, volumes = _setup(
        stack, alice, make_volume, shared_guests, tag
    )
    every_volume = {v for vs in volumes.values() for v in vs}
    journal = Journal.from_url(pg_journal)
    journal.upgrade()
    cut_off = members[-1]
    etcd_upstream = stack.raw["coordination_url"].split("+", 1)[1]
    with (
        FaultProxy(stack.cinder_url) as proxy,
        FaultProxy(etcd_upstream) as etcd,
    ):
        clouds = _proxied_clouds(stack, tmp_path, proxy)
        paths = _write_configs(
            tmp_path,
            stack,
            uri,
            pg_journal,
            members,
            policy,
            "proxied",
            f"ft-{tag}",
            backend={cut_off: _etcd_proxy_url(stack, etcd)},
            max_freeze=MAX_FREEZE,
        )
        started, joined = _start_together(
            daemons, paths, {"OS_CLIENT_CONFIG_FILE": str(clouds)}
        )

        # -- slot 1: etcd away while it runs.
        first = wait_until(
            lambda: _first_slot(journal, policy, after=joined),
            150,
            "the first slot with all three",
        )
        etcd_pid = int(
            pathlib.Path(stack.raw["pid_files"]["etcd"]).read_text()
        )
        os.kill(etcd_pid, signal.SIGSTOP)
        try:
            _wait_shares_settled(
                journal, policy, first, "slot 1 settled with etcd away"
            )
            # Away for longer than a lease: every member's key lapses.
            time.sleep(max(0, LEASE + 5))
        finally:
            os.kill(etcd_pid, signal.SIGCONT)
        runs = _slot_runs(journal, policy, first)
        by_volume = collections.Counter(
            r.target for r in runs if r.target in every_volume
        )
        assert set(by_volume) == every_volume
        assert set(by_volume.values()) == {1}, by_volume
        assert {r.state for r in runs if r.target in every_volume} == {
            states.SUCCEEDED
        }, [(r.target, r.state, r.summary) for r in runs]
        work = collections.Counter(
            r.host for r in runs if r.target in every_volume
        )
        print(f"slot 1 (etcd away) volumes per daemon: {dict(work)}")
        assert set(work) == set(members), work
        _held_within(journal, runs, MAX_FREEZE + 5)
        for volume_id in every_volume:
            assert len(_backups_of_slot(admin, volume_id, policy, first)) == 1
        # Every daemon beats in the journal; status shows them.
        rows = Cinderbak(paths[members[0]], clouds_env).run(
            "status", "--daemons", check=True
        )
        assert {r["host"] for r in rows if r["beats"] > 0} >= set(members)

        # -- slot 2: etcd back, the whole group, each volume once.
        second, runs = _next_slot_settled(
            journal, policy, first, every_volume, "the next slot"
        )
        assert {r.state for r in runs if r.target in every_volume} == {
            states.SUCCEEDED
        }
        shares = collections.Counter(
            r.host for r in runs if r.target in every_volume
        )

        # -- slot 3: one daemon cut off from etcd alone, for more than a
        # lease before the slot and through it.
        while 60 - time.time() % 60 < LEASE + 5:
            time.sleep(1)
        rejoined = started[cut_off].output().count("joining again")
        etcd.unreachable_until = time.monotonic() + 3600
        _, runs = _next_slot_settled(
            journal, policy, second, every_volume, "the slot with one cut off"
        )
        etcd.unreachable_until = 0.0
        cut_shares = collections.Counter(
            r.host for r in runs if r.target in every_volume
        )
        print(
            f"shares with all three: {dict(shares)}; with {cut_off} cut "
            f"off from etcd: {dict(cut_shares)}"
        )
        assert {r.state for r in runs if r.target in every_volume} == {
            states.SUCCEEDED
        }, [(r.target, r.host, r.state, r.summary) for r in runs]
        assert cut_shares == shares
        _held_within(journal, runs, MAX_FREEZE + 5)
        wait_until(
            lambda: (
                started[cut_off].output().count("joining again") > rejoined
            ),
            60,
            f"{cut_off} back in the group",
        )
        for member in members:
            output = started[member].output()
            assert "takeover of" not in output, output[-3000:]

        # -- slot 4: backup requests answer slowly (shorter than a lease,
        # so the killed daemon's request reaches Cinder before a survivor
        # looks for its backup), which holds every freeze open; kill the
        # first daemon seen frozen.
        proxy.add("POST", r"/backups$", "delay", times=10_000, seconds=4)
        victim = wait_until(
            lambda: next((m for m in members if _frozen_by(journal, m)), None),
            120,
            "a daemon holding a frozen guest",
            interval=0.2,
        )
        frozen = _frozen_by(journal, victim)
        started[victim].proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        started[victim].wait(30)
        proxy.rules.clear()
        frozen_servers = {s.target for s in frozen}
        survivors = [m for m in members if m != victim]

        def thawed_by_survivor():
            thaws = []
            for step in frozen:
                run = journal.get_run(step.run_id)
                thaws += [
                    s
                    for s in run.steps or ()
                    if s.kind == steps.THAW
                    and s.target == step.target
                    and s.state == states.StepState.DONE
                    and s.details.get("host") in survivors
                ]
            return len(thaws) >= len(frozen_servers)

        wait_until(
            thawed_by_survivor, 3 * LEASE, "a survivor thawing", interval=0.5
        )
        took = time.monotonic() - killed_at
        print(
            f"killed {victim} holding {len(frozen_servers)} frozen guests; "
            f"thawed by a survivor after {took:.1f} s (lease {LEASE} s)"
        )
        fourth = journal.get_run(frozen[0].run_id).scheduled_at
        _wait_settled(
            journal, policy, fourth, every_volume, 300, "slot 4 settled"
        )
        runs = _slot_runs(journal, policy, fourth)
        by_volume = collections.Counter(
            r.target for r in runs if r.target in every_volume
        )
        assert set(by_volume.values()) == {1}, by_volume
        outcome = collections.Counter(
            str(r.state) for r in runs if r.target in every_volume
        )
        print(f"slot 4 outcomes: {dict(outcome)}")
        # No duplicate backup, no leaked snapshot, every guest thawed.
        for volume_id in every_volume:
            made = _backups_of_slot(admin, volume_id, policy, fourth)
            assert len(made) <= 1, (volume_id, made)
        wait_until(
            lambda: (
                not [
                    s
                    for s in admin.block_storage.snapshots(
                        details=True, all_projects=True
                    )
                    if s.volume_id in every_volume
                ]
            ),
            120,
            "no temporary snapshot left",
            interval=2,
        )
        for domain in domains:
            assert domain.fsThaw() == 0, f"{domain.name()} was still frozen"
        for member in survivors:
            assert started[member].proc.poll() is None
            output = started[member].output()
            assert "Traceback" not in output, output[-3000:]
        takeover_lines = [
            line
            for m in survivors
            for line in started[m].output().splitlines()
            if "takeover" in line
        ]
        assert any(victim in line for line in takeover_lines), takeover_lines
        for member in survivors:
            assert started[member].stop(60) == 0
    for domain in domains:
        domain.destroy()
