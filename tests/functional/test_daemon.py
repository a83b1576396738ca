"""`cinderbak-daemon` against the real stack: schedules, stops, restarts.

Each test runs the daemon as a process of its own (`python -m
cinderbak.cmd.daemon`), watches its journal and the cloud, and signals it
as systemd or an operator would: SIGTERM, SIGHUP, and kill -9.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from cinderbak import policy
from cinderbak.journal import Journal, states
from cinderbak.workflow import resource_name
from tests import configs

UTC = datetime.UTC
OPT_IN = "cinderbak:policy"
# Every keystoneauth request is logged as one "REQ:" line: the count of
# API calls a run makes. The rest stays as quiet as the defaults.
COUNT_REQUESTS = (
    "keystoneauth=WARN,keystoneauth.session=DEBUG,openstack=WARN,"
    "urllib3=WARN,stevedore=WARN,apscheduler=WARN,alembic=WARN"
)


def wait_until(predicate, timeout, what, *, interval=0.2, daemon=None):
    """Return the first truthy value of predicate(), or fail saying what."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except sa.exc.OperationalError:
            value = None  # the daemon has not made its journal yet
        if value:
            return value
        if time.monotonic() > deadline:
            tail = daemon.output()[-4000:] if daemon else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(interval)


class Daemon:
    """One cinderbak-daemon process; its output goes to a file."""

    def __init__(self, config, out, env) -> None:
        self.config = config
        self.out = out
        with open(out, "wb") as sink:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cinderbak.cmd.daemon",
                    "--config-file",
                    str(config.path),
                ],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def signal(self, signum) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout=90) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout=90) -> int:
        """SIGTERM, as systemd stops it; return the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)


class Daemons:
    """Starts daemons for a test and kills any left when it ends."""

    def __init__(self, tmp_path, clouds_env) -> None:
        self.tmp_path = tmp_path
        self.env = clouds_env
        self.started: list[Daemon] = []

    def start(self, config, **env) -> Daemon:
        out = self.tmp_path / f"daemon-{len(self.started)}.out"
        daemon = Daemon(config, out, dict(self.env, **env))
        self.started.append(daemon)
        return daemon

    def journal(self) -> Journal:
        return Journal.from_url(f"sqlite:///{self.tmp_path}/journal.sqlite")

    def kill_all(self) -> None:
        for daemon in self.started:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait(30)


@pytest.fixture
def daemons(tmp_path, clouds_env, cleanup):
    # Depends on cleanup so that daemons stop before volumes are deleted.
    started = Daemons(tmp_path, clouds_env)
    yield started
    started.kill_all()


class NotifySocket:
    """Stands in for systemd: reads $NOTIFY_SOCKET as messages come."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.received: list[str] = []
        self.done = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def messages(self) -> list[str]:
        self.done.set()
        self.reader.join()
        self.sock.close()
        return self.received


def _unique(prefix: str) -> str:
    """A policy name no other test on the shared stack uses."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _policy(name, schedule, **options) -> str:
    lines = [f"[policy:{name}]", f"schedule = {schedule}"]
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def _volume_runs(journal, volume_id):
    return journal.runs(target=volume_id, limit=100)


def _step_with_resource(journal, volume_id, kind):
    for run in journal.unfinished_runs(any_host=True):
        for step in run.steps or ():
            if (
                step.target == volume_id
                and step.kind == kind
                and step.resource_id
            ):
                return step
    return None


def _our_backups(admin, volume_id, name=None):
    return [
        backup
        for backup in admin.block_storage.backups(
            details=True, all_projects=True, volume_id=volume_id
        )
        if name is None or backup.name == name
    ]


def _recovery_lines(text: str) -> list[str]:
    return [
        line.split(" [-] ", 1)[-1]
        for line in text.splitlines()
        if "recovery" in line
        and "cinderbak.scheduler" in line
        or "recovery: run" in line
    ]


# -- scheduled runs ------------------------------------------------------


def test_scheduled_runs_make_full_then_incremental_and_status_shows_them(
    stack, cinderbak_config, make_volume, alice, bob, admin, daemons, tmp_path
):
    fast, stuck = _unique("fast"), _unique("stuck")
    config = cinderbak_config(
        "[daemon]\nshutdown_timeout = 30\n"
        + _policy(fast, "every 10s")
        + _policy(stuck, "every 1h", backup_timeout=3)
    )
    volume = make_volume(alice, metadata={OPT_IN: fast})
    slow = make_volume(bob, metadata={OPT_IN: stuck})
    notify = NotifySocket(tmp_path / "notify")
    journal = daemons.journal()
    # The backup service paused: the stuck policy's catch-up backup stays
    # creating past its 3 s timeout (fast's first backup just waits).
    backup_service = int(
        pathlib.Path(stack.raw["pid_files"]["cinder-backup"]).read_text()
    )
    os.killpg(backup_service, signal.SIGSTOP)
    try:
        daemon = daemons.start(
            config, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="2000000"
        )
        timed_out = wait_until(
            lambda: [
                run
                for run in _volume_runs(journal, slow.id)
                if run.state is states.TIMED_OUT
            ],
            90,
            "the stuck backup's timeout",
            daemon=daemon,
        )
    finally:
        os.killpg(backup_service, signal.SIGCONT)

    def succeeded():
        done = [
            run
            for run in _volume_runs(journal, volume.id)
            if run.state is states.SUCCEEDED
        ]
        return done if len(done) >= 2 else None

    done = wait_until(succeeded, 180, "two backups of fast", daemon=daemon)
    assert timed_out[0].summary["status"] == "timeout"

    # The first run makes a full backup, the next an incremental one.
    oldest_first = sorted(done, key=lambda run: run.scheduled_at)
    assert [run.summary["kind"] for run in oldest_first[:2]] == [
        "full",
        "incremental",
    ]
    backups = sorted(
        _our_backups(admin, volume.id), key=lambda b: b.created_at
    )
    assert [b.is_incremental for b in backups[:2]] == [False, True]
    assert {run.summary["backup_id"] for run in done} <= {
        b.id for b in backups
    }
    assert all(
        b.metadata["cinderbak:owner"] == config.deployment_id for b in backups
    )

    # The operator's view, from the journal only.
    policies = {row["policy"]: row for row in config.run("status", check=True)}
    assert policies[fast]["schedule"] == "every 10s"
    assert policies[fast]["volumes_backed_up"] == 1
    next_run = datetime.datetime.fromisoformat(policies[fast]["next_run"])
    assert next_run > datetime.datetime.now(UTC) - datetime.timedelta(
        seconds=5
    )
    assert policies[stuck]["last_state"] == "failed"
    assert "timed_out" not in policies[stuck]["last_summary"]  # counts
    assert "failed=1" in policies[stuck]["last_summary"]
    rows = config.run("status", "--volumes", check=True)
    mine = {row["volume_id"]: row for row in rows}
    assert mine[volume.id]["policy"] == fast
    assert mine[volume.id]["last_backup_kind"] == "incremental"
    # The 10 s policy keeps running: compare with the backups as now.
    assert mine[volume.id]["last_backup_id"] in {
        b.id for b in _our_backups(admin, volume.id)
    }
    assert mine[slow.id]["last_run_state"] == "timed_out"
    assert "still creating after its timeout" in mine[slow.id]["last_error"]

    listed = config.run("runs", "--target", volume.id, check=True)
    assert {"full", "incremental"} <= {row["kind"] for row in listed}
    assert all(row["policy"] == fast for row in listed)
    failed = config.run("runs", "--failed", check=True)
    assert {row["target"] for row in failed} >= {slow.id}
    assert all(row["state"] != "succeeded" for row in failed)
    slots = config.run("runs", "--policy", fast, "--target", "*")
    assert any(
        row["state"] == "succeeded" and "ok=1" in row["result"]
        for row in slots
    )

    assert daemon.stop() == 0
    messages = notify.messages()
    assert any("READY=1" in m.splitlines() for m in messages), messages
    assert any(m == "WATCHDOG=1" for m in messages), messages
    assert any("STATUS=" in m for m in messages), messages
    assert any("STOPPING=1" in m.splitlines() for m in messages), messages
    assert "SIGTERM: stopping" in daemon.output()


# -- restarts ------------------------------------------------------------


def test_each_run_is_followed_by_expiry(
    cinderbak_config, make_volume, alice, admin, daemons
):
    """retention last=1, every backup a full: after each run, expiry
    deletes the backup the new one superseded."""
    name = _unique("expiring")
    config = cinderbak_config(
        "[daemon]\nshutdown_timeout = 30\n"
        + _policy(name, "every 10s", retention="last=1", full_every="0")
    )
    volume = make_volume(alice, metadata={OPT_IN: name})
    daemon = daemons.start(config)
    journal = daemons.journal()

    def three_runs_and_one_backup():
        done = [
            run
            for run in _volume_runs(journal, volume.id)
            if run.state is states.SUCCEEDED
        ]
        left = [
            b for b in _our_backups(admin, volume.id) if b.status != "deleting"
        ]
        return done if len(done) >= 3 and len(left) == 1 else None

    done = wait_until(
        three_runs_and_one_backup, 180, "expiry after runs", daemon=daemon
    )
    newest = max(done, key=lambda run: run.scheduled_at)
    (kept,) = [
        b for b in _our_backups(admin, volume.id) if b.status != "deleting"
    ]
    assert kept.id == newest.summary["backup_id"]
    deletions = journal.runs(policy=f"expire:{name}", limit=100)
    assert deletions, "no expiry pass was recorded"
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    "mode, kind, signum",
    [
        ("volume", "backup_create", signal.SIGKILL),
        ("snapshot", "snapshot_create", signal.SIGKILL),
        ("snapshot", "backup_create", signal.SIGKILL),
        ("volume", "backup_create", signal.SIGTERM),
    ],
    ids=[
        "kill-9-after-backup-request",
        "kill-9-after-snapshot-request-snapshot-mode",
        "kill-9-after-backup-request-snapshot-mode",
        "sigterm-after-backup-request",
    ],
)
def test_a_restart_finishes_the_run_with_one_backup_and_no_leak(
    cinderbak_config,
    make_volume,
    alice,
    admin,
    daemons,
    mode,
    kind,
    signum,
):
    # Every hour: the run due at start-up is the only one in the test.
    hourly = _unique("hourly")
    config = cinderbak_config(_policy(hourly, "every 1h", transfer_mode=mode))
    volume = make_volume(alice, metadata={OPT_IN: hourly})
    first = daemons.start(config)
    journal = daemons.journal()
    step = wait_until(
        lambda: _step_with_resource(journal, volume.id, kind),
        90,
        f"a {kind} step with its resource id",
        interval=0.05,
        daemon=first,
    )
    first.signal(signum)
    assert first.wait(60) == (0 if signum == signal.SIGTERM else -9)
    interrupted = journal.get_run(step.run_id)
    assert not interrupted.is_final
    slot = interrupted.scheduled_at

    second = daemons.start(config)
    final = wait_until(
        lambda: (run := journal.get_run(step.run_id)).is_final and run,
        180,
        "recovery to finish the run",
        daemon=second,
    )
    settled = wait_until(
        lambda: [
            run
            for run in journal.runs(policy=hourly, target="*", limit=10)
            if run.scheduled_at == slot and run.is_final
        ],
        60,
        "the slot's policy-level run to be settled",
        daemon=second,
    )
    name = resource_name(f"{hourly}@{slot:%Y-%m-%dT%H:%M:%SZ}")
    backups = _our_backups(admin, volume.id, name)
    if kind == "snapshot_create":
        # Killed before the backup was asked for: the run failed, the next
        # slot backs the volume up; nothing was created twice.
        assert final.state is states.FAILED
        assert "before the backup was requested" in final.summary["error"]
        assert backups == []
        assert settled[0].state is states.FAILED
    else:
        assert final.state is states.SUCCEEDED, final.summary
        assert [b.id for b in backups] == [step.resource_id]
        assert backups[0].status == "available"
        assert settled[0].state is states.SUCCEEDED, settled[0].summary
        assert settled[0].summary["ok"] == 1
    assert wait_until(
        lambda: (
            not list(
                admin.block_storage.snapshots(
                    all_projects=True, volume_id=volume.id
                )
            )
        ),
        90,
        "the temporary snapshot to be deleted",
        interval=1,
        daemon=second,
    )
    # Nothing of this slot is left in flight.
    assert not [
        run
        for run in journal.unfinished_runs(any_host=True)
        if run.scheduled_at == slot
    ]
    output = second.output()
    assert "recovery: 1 unfinished volume runs (1 running) in" in output
    print(f"\n[{mode}/{kind}/{signal.Signals(signum).name}] recovery:")
    for line in _recovery_lines(output):
        print("   ", line)
    assert second.stop() == 0


def test_a_slot_killed_before_discovery_is_run_again_not_called_a_success(
    cinderbak_config, make_volume, alice, admin, daemons
):
    """What a kill -9 between a slot's start and its discovery leaves: a
    RUNNING policy-level run with no volume runs. The restart must back
    the slot's volumes up (it is within the misfire grace), not settle
    it as succeeded with 0 volumes."""
    hourly = _unique("hourly")
    config = cinderbak_config(_policy(hourly, "every 1h"))
    volume = make_volume(alice, metadata={OPT_IN: hourly})
    known = policy.load_policies(configs.conf_from(config.path))[hourly]
    slot = known.schedule.last_fire_time(datetime.datetime.now(datetime.UTC))
    journal = daemons.journal()
    journal.upgrade()
    left = journal.begin_run(
        hourly, "*", slot, project_id=None, attrs={"kind": "policy"}
    )
    journal.start_run(left.id)

    daemon = daemons.start(config)
    settled = wait_until(
        lambda: (run := journal.get_run(left.id)).is_final and run,
        180,
        "the interrupted slot to be settled",
        daemon=daemon,
    )
    assert settled.state is states.SUCCEEDED, settled.summary
    assert settled.summary["ok"] == 1, settled.summary
    (run,) = _volume_runs(journal, volume.id)
    assert run.scheduled_at == slot and run.state is states.SUCCEEDED
    assert len(_our_backups(admin, volume.id)) == 1
    assert "interrupted before discovery; running it now" in (daemon.output())
    assert daemon.stop() == 0


# -- processes of one host -------------------------------------------------

HOLD_THE_HOST = """
import sys
from cinderbak.hostlock import HostLock
lock = HostLock(sys.argv[1], sys.argv[2])
lock.share()
print("held", flush=True)
sys.stdin.read()
"""


class HostHolder:
    """Another cinderbak process of this host, as far as its lock file
    says: a command in the middle of its work."""

    def __init__(self, config) -> None:
        conf = configs.conf_from(config.path)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_HOST, conf.state_path, conf.host],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "held"

    def end(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def _interrupted_expiry(cinderbak_config, daemons, prefix):
    """A config with one policy, its journal, and a run of it in flight,
    as a process of this host leaves it mid-pass."""
    name = _unique(prefix)
    config = cinderbak_config(_policy(name, "every 1h"))
    journal = daemons.journal()
    journal.upgrade()
    run = journal.begin_run(
        f"expire:{name}",
        "volume-x",
        datetime.datetime.now(UTC),
        project_id=None,
    )
    journal.start_run(run.id)
    return name, config, journal, run


def test_run_once_leaves_the_runs_of_a_live_process_of_its_host_alone(
    cinderbak_config, daemons
):
    """run-once recovers the host's unfinished runs only when no other
    cinderbak process of the host is alive: next to a daemon, they are
    its runs in flight (a guest it froze, a snapshot it copies)."""
    name, config, journal, left = _interrupted_expiry(
        cinderbak_config, daemons, "lone"
    )

    holder = HostHolder(config)
    try:
        config.run("run-once", "--policy", name, "--no-audit", check=True)
        assert "recovery: skipped" in config.last_stdout
        assert not journal.get_run(left.id).is_final
    finally:
        holder.end()

    config.run("run-once", "--policy", name, "--no-audit", check=True)
    assert "recovery: skipped" not in config.last_stdout
    run = journal.get_run(left.id)
    assert run.state is states.FAILED, run
    assert "interrupted" in run.summary["error"]


def test_the_daemon_starts_after_a_command_of_its_host_has_ended(
    cinderbak_config, daemons
):
    """A daemon started while a command of its host runs would take the
    command's runs for its own leftovers: it waits, says so, and
    recovers and schedules once the command has ended."""
    _name, config, journal, left = _interrupted_expiry(
        cinderbak_config, daemons, "wait"
    )

    holder = HostHolder(config)
    try:
        daemon = daemons.start(config)
        wait_until(
            lambda: "another cinderbak process of host" in daemon.output(),
            60,
            "the daemon to say it waits",
            daemon=daemon,
        )
        time.sleep(3)
        assert not journal.get_run(left.id).is_final
        assert daemon.proc.poll() is None
    finally:
        holder.end()
    run = wait_until(
        lambda: (run := journal.get_run(left.id)).is_final and run,
        60,
        "the daemon's recovery of the interrupted pass",
        daemon=daemon,
    )
    assert run.state is states.FAILED, run
    assert daemon.stop() == 0


# -- concurrency limits and the cost of a run -----------------------------


def test_limits_hold_for_twenty_volumes_and_a_steady_run_costs_little(
    cinderbak_config, alice, admin, cleanup, daemons
):
    count = 20
    many = _unique("many")
    config = cinderbak_config(
        "[limits]\nmax_in_flight = 3\nmax_in_flight_per_project = 3\n"
        "[daemon]\naudit_interval = 0\nshutdown_timeout = 30\n"
        + _policy(many, "every 30s"),
        default_log_levels=COUNT_REQUESTS,
    )
    tag = uuid.uuid4().hex[:6]

    def make(i):
        volume = alice.block_storage.create_volume(
            size=1, name=f"ft-many-{tag}-{i}", metadata={OPT_IN: many}
        )
        cleanup.add("volume", volume.id)
        return alice.block_storage.wait_for_status(
            volume, status="available", failures=["error"], wait=180
        )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        volumes = list(pool.map(make, range(count)))
    ids = {volume.id for volume in volumes}

    daemon = daemons.start(config)
    journal = daemons.journal()
    wait_until(journal.schema_revision, 60, "the journal", daemon=daemon)
    peak = 0
    samples = 0

    def slots_done():
        return [
            run
            for run in journal.runs(policy=many, target="*", limit=20)
            if run.is_final
            and run.state not in (states.SKIPPED, states.MISSED)
        ]

    started = time.monotonic()
    while not slots_done():
        creating = [
            backup
            for backup in admin.block_storage.backups(
                all_projects=True, status="creating"
            )
            if backup.volume_id in ids
        ]
        peak = max(peak, len(creating))
        samples += 1
        assert len(creating) <= 3, [b.id for b in creating]
        assert time.monotonic() - started < 300, daemon.output()[-4000:]
        time.sleep(0.3)
    first_seconds = time.monotonic() - started
    first = slots_done()[0]
    assert first.state is states.SUCCEEDED, first.summary
    assert first.summary["ok"] == count, first.summary
    assert peak >= 2, f"only {peak} in flight at once over {samples} samples"

    # The next slot is the steady state: every volume has its full.
    second = wait_until(
        lambda: [
            r for r in slots_done() if r.scheduled_at > first.scheduled_at
        ],
        200,
        "a second run",
        interval=1,
        daemon=daemon,
    )[0]
    assert second.state is states.SUCCEEDED, second.summary
    assert second.summary["ok"] == count, second.summary
    kinds = [
        run.summary["kind"]
        for run in journal.runs(policy=many, limit=200)
        if run.scheduled_at == second.scheduled_at and run.target != "*"
    ]
    assert kinds == ["incremental"] * count
    with open(f"/proc/{daemon.pid}/status") as status:
        memory = dict(
            line.split(":", 1) for line in status if line.startswith("Vm")
        )
    assert daemon.stop() == 0

    output = daemon.output()
    begin = f"slot {second.scheduled_at}: run started"
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if begin in line)
    end = next(
        i
        for i, line in enumerate(lines)
        if i > start and f"slot {second.scheduled_at}: succeeded" in line
    )
    window = lines[start:end]
    requests = [line for line in window if "REQ: curl" in line]
    methods = {}
    for line in requests:
        match = re.search(r'-X (\w+) "?(\S+?)[?"\s]', line)
        key = f"{match[1]} {re.sub(r'/[0-9a-f-]{32,36}', '/ID', match[2])}"
        methods[key] = methods.get(key, 0) + 1
    duration = second.duration.total_seconds()
    print(
        f"\nfirst run (20 full): {first_seconds:.0f} s, peak in flight "
        f"{peak} over {samples} samples\nsteady run (20 incremental): "
        f"{len(requests)} API requests in {duration:.0f} s "
        f"({len(requests) / count:.1f} per volume)"
    )
    for key, n in sorted(methods.items(), key=lambda kv: -kv[1]):
        print(f"    {n:4d}  {key}")
    print(
        f"daemon VmRSS {memory['VmRSS'].strip()}, "
        f"peak VmHWM {memory['VmHWM'].strip()}"
    )
    # Per volume: backup history, quota, create, one GET when done; the
    # polling is one list call per interval for all of them.
    assert len(requests) < 8 * count


# -- reload --------------------------------------------------------------


def test_sighup_keeps_in_flight_runs_and_rejects_a_broken_policy(
    cinderbak_config, make_volume, alice, daemons
):
    hourly, nightly = _unique("hourly"), _unique("nightly")
    config = cinderbak_config(_policy(hourly, "every 1h"))
    original = config.path.read_text()
    volume = make_volume(alice, metadata={OPT_IN: hourly})
    daemon = daemons.start(config)
    journal = daemons.journal()
    step = wait_until(
        lambda: _step_with_resource(journal, volume.id, "backup_create"),
        90,
        "the backup request",
        interval=0.05,
        daemon=daemon,
    )
    # Remove the policy whose run is in flight, add another.
    config.path.write_text(
        original.replace(f"[policy:{hourly}]", f"[policy:{nightly}]").replace(
            "every 1h", "0 3 * * *"
        )
    )
    daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: (
            f"reload: added {nightly}; removed {hourly}" in daemon.output()
        ),
        30,
        "the reload",
        daemon=daemon,
    )
    finished = wait_until(
        lambda: (run := journal.get_run(step.run_id)).is_final and run,
        120,
        "the run in flight to finish",
        daemon=daemon,
    )
    assert finished.state is states.SUCCEEDED, finished.summary

    # A broken policy is refused with its reason; the old ones stay.
    config.path.write_text(
        original.replace("every 1h", "now and then")
        + _policy(nightly, "0 3 * * *")
    )
    daemon.signal(signal.SIGHUP)
    rejected = wait_until(
        lambda: [
            line
            for line in daemon.output().splitlines()
            if "reload rejected" in line
        ],
        30,
        "the rejection",
        daemon=daemon,
    )
    assert "the 1 policies in force are kept" in rejected[0]
    assert f"[policy:{hourly}] schedule" in rejected[0]
    assert "'now and then' is neither a crontab" in rejected[0]
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_a_bad_configuration_stops_the_start_with_exit_code_2(
    cinderbak_config, clouds_env, tmp_path
):
    config = cinderbak_config(_policy("bad", "every 1h", transfer_mode="tape"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cinderbak.cmd.daemon",
            "--config-file",
            str(config.path),
        ],
        env=clouds_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    output = result.stdout + result.stderr
    assert "cannot start" in output
    assert "[policy:bad] transfer_mode" in output
    # Nothing was started: no journal was made.
    assert not os.path.exists(tmp_path / "journal.sqlite")
