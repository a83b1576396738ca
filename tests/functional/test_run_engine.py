"""The run engine under the weather of a real region, on the real stack.

A backup service that dies mid-run, a tenant with many volumes next to
one with few, an answer lost after Cinder carried out a create, a backup
deleted behind our back while a restart waits for it. Faults a real
service cannot produce on demand (a lost answer) come from a proxy at the
HTTP boundary (tests/faultproxy.py); everything else is real.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import textwrap
import time
import uuid

import pytest
import yaml

from cinderbak import tenant
from cinderbak.journal import Journal, states, steps
from tests import localstack
from tests.faultproxy import FaultProxy
from tests.functional.conftest import CINDERBAK, Cinderbak, config_text
from tests.functional.test_daemon import wait_until

MIB = 1024 * 1024


def _policy(name: str, **options: object) -> str:
    lines = [f"[policy:{name}]", "schedule = every 1h", "retention = last=9"]
    lines += [f"{k} = {v}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def _journal(cinderbak: Cinderbak) -> Journal:
    db = pathlib.Path(cinderbak.path).parent / "journal.sqlite"
    return Journal.from_url(f"sqlite:///{db}")


def _ours(admin, volume_id: str, deployment: str):
    return [
        b
        for b in admin.block_storage.backups(
            details=True, all_projects=True, volume_id=volume_id
        )
        if tenant.is_ours(b.metadata or {}, deployment)
    ]


def _start_run_once(
    cinderbak: Cinderbak, output: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """``cinderbak run-once`` in the background (to be killed, or to have
    the API fail under it); JSON rows on ``output``."""
    return subprocess.Popen(
        [
            str(CINDERBAK),
            "--config-file",
            str(cinderbak.path),
            "run-once",
            "--no-audit",
            "-f",
            "json",
        ],
        env=cinderbak.env,
        stdout=output,
        stderr=output,
        text=True,
    )


def _backup_service_pgid(stack) -> int:
    return int(
        pathlib.Path(stack.raw["pid_files"]["cinder-backup"]).read_text()
    )


# -- a backup service that dies ------------------------------------------


def test_a_dead_backup_service_costs_minutes_and_the_next_run_recovers(
    stack, alice, admin, make_volume, cinderbak_config
):
    name = f"dead{uuid.uuid4().hex[:6]}"
    cinderbak = cinderbak_config(
        _policy(name, backup_timeout=3600, full_every=6)
        + "[limits]\nmax_in_flight = 1\n"
    )
    volumes = [
        make_volume(alice, metadata={tenant.POLICY: name}) for _ in range(3)
    ]
    for volume in volumes:
        localstack.write_volume(stack, volume.id, 0, os.urandom(4 * MIB))
    first = cinderbak.run("run-once", "--no-audit", check=True)
    assert {r["kind"] for r in first} == {"full"}, first

    os.killpg(_backup_service_pgid(stack), signal.SIGKILL)
    try:
        for volume in volumes:
            localstack.write_volume(stack, volume.id, 0, os.urandom(MIB))
        started = time.monotonic()
        rows = cinderbak.run("run-once", "--no-audit")
        took = time.monotonic() - started
        # Cinder's service_down_time (60 s) plus our stall bound: minutes,
        # not backup_timeout (an hour) per wave.
        assert took < 240, took
        assert cinderbak.last_returncode == 1
        assert len(rows) == 3 and all(r["status"] == "error" for r in rows)
        assert all("backup service" in r["error"] for r in rows), rows
        # max_in_flight = 1: one backup was submitted, then no more.
        submitted = [
            b
            for v in volumes
            for b in _ours(admin, v.id, cinderbak.deployment_id)
            if b.is_incremental
        ]
        assert len(submitted) == 1, submitted
        for volume in volumes:
            metadata = admin.block_storage.get_volume(volume.id).metadata
            assert metadata[tenant.LAST_STATUS].startswith("error: "), metadata
            assert "backup service" in metadata[tenant.LAST_STATUS]
        print(f"\n[dead backup service] run ended after {took:.0f} s")
    finally:
        localstack.ensure_up()

    # Back: Cinder marks the stuck backup error; the next run's sweep
    # deletes it and every volume gets an incremental, not a full.
    def stuck_settled():
        states_now = {
            b.status
            for v in volumes
            for b in _ours(admin, v.id, cinderbak.deployment_id)
        }
        return "creating" not in states_now

    wait_until(stuck_settled, 180, "Cinder to settle the stuck backup")
    rows = cinderbak.run("run-once", "--no-audit", check=True)
    assert [r["kind"] for r in rows] == ["incremental"] * 3, rows

    def only_good_backups_left():
        return not [
            b
            for v in volumes
            for b in _ours(admin, v.id, cinderbak.deployment_id)
            if b.status != "available"
        ]

    wait_until(only_good_backups_left, 120, "our error backup to be gone")


# -- fair share --------------------------------------------------------------


def test_a_tenant_with_few_volumes_is_not_starved_by_one_with_many(
    alice, bob, make_volume, cinderbak_config
):
    name = f"fair{uuid.uuid4().hex[:6]}"
    cinderbak = cinderbak_config(
        _policy(name, ownership="service") + "[limits]\nmax_in_flight = 2\n"
    )
    many = [
        make_volume(alice, metadata={tenant.POLICY: name}) for _ in range(8)
    ]
    few = [make_volume(bob, metadata={tenant.POLICY: name}) for _ in range(2)]
    rows = cinderbak.run("run-once", "--no-audit", check=True)
    assert {r["status"] for r in rows} == {"ok"}, rows
    journal = _journal(cinderbak)
    try:
        runs = [
            r for r in journal.runs(policy=name, limit=100) if r.target != "*"
        ]
    finally:
        journal.close()
    order = [r.target for r in sorted(runs, key=lambda r: r.started_at)]
    small = {v.id for v in few}
    positions = [i for i, target in enumerate(order) if target in small]
    print(f"\n[fair share] the small tenant's starts: {positions} of 10")
    # Round-robin: its two volumes start 2nd and 4th at the latest.
    assert positions[0] <= 1 and positions[1] <= 3, order
    assert len(order) == len(many) + len(few)


# -- an answer lost after Cinder acted ---------------------------------------


@pytest.fixture
def proxied(stack, tmp_path):
    """A cinderbak config whose Block Storage calls go through a fault
    proxy in front of the real Cinder."""
    with FaultProxy(stack.cinder_url) as proxy:
        clouds = yaml.safe_load(pathlib.Path(stack.clouds_yaml).read_text())
        cloud = dict(clouds["clouds"]["localstack-cinderbak"])
        cloud["block_storage_endpoint_override"] = proxy.url + "/v3"
        clouds["clouds"]["proxied"] = cloud
        path = tmp_path / "clouds.yaml"
        path.write_text(yaml.safe_dump(clouds))
        path.chmod(0o600)

        def make(policies: str) -> Cinderbak:
            deployment = f"ft-{uuid.uuid4().hex}"
            text = config_text(
                tmp_path,
                deployment,
                "write_back_status = true\n",
                "cloud = proxied\napi_retries = 2\napi_retry_max_wait = 1\n",
            ) + textwrap.dedent(policies)
            conf = tmp_path / "cinderbak.conf"
            conf.write_text(text)
            env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(path))
            runner = Cinderbak(conf, env)
            runner.deployment_id = deployment
            return runner

        yield proxy, make


@pytest.mark.parametrize(
    "mode, path",
    [("volume", r"^/v3/backups$"), ("snapshot", r"^/v3/snapshots$")],
)
def test_a_create_whose_answer_is_lost_is_adopted_not_repeated(
    proxied, alice, admin, make_volume, mode, path
):
    proxy, make = proxied
    name = f"lost{uuid.uuid4().hex[:6]}"
    cinderbak = make(_policy(name, transfer_mode=mode))
    volume = make_volume(alice, metadata={tenant.POLICY: name})
    rule = proxy.add("POST", path, "drop_after")
    (row,) = cinderbak.run("run-once", "--no-audit")
    assert rule.hits == 1, proxy.log
    assert row["status"] == "ok", (row, cinderbak.last_stderr[-3000:])
    backups = _ours(admin, volume.id, cinderbak.deployment_id)
    assert [b.id for b in backups] == [row["backup_id"]]
    # One request reached Cinder per create: the lost one was adopted.
    posts = [e for e in proxy.log if e[0] == "POST" and e[1] == path[1:-1]]
    assert len(posts) == 1, proxy.log
    assert "adopting it" in cinderbak.last_stderr
    # Nothing temporary is left behind.
    assert (
        list(
            admin.block_storage.snapshots(
                all_projects=True, volume_id=volume.id
            )
        )
        == []
    )


def test_answers_that_are_not_json_are_failed_calls_not_a_crash(
    proxied, alice, admin, make_volume
):
    """A page of something in between, served with status 200, instead
    of Cinder's answer: to a read (repeated) and to the create (looked
    for, then adopted: Cinder carried it out)."""
    proxy, make = proxied
    name = f"garbled{uuid.uuid4().hex[:6]}"
    cinderbak = make(_policy(name))
    volume = make_volume(alice, metadata={tenant.POLICY: name})
    read = proxy.add("GET", r"^/v3/backups/detail\?", "garble")
    create = proxy.add("POST", r"^/v3/backups$", "garble")
    (row,) = cinderbak.run("run-once", "--no-audit")
    assert (read.hits, create.hits) == (1, 1), proxy.log
    assert row["status"] == "ok", (row, cinderbak.last_stderr[-3000:])
    backups = _ours(admin, volume.id, cinderbak.deployment_id)
    assert [b.id for b in backups] == [row["backup_id"]]
    posts = [e for e in proxy.log if e[:2] == ("POST", "/v3/backups")]
    assert len(posts) == 1, proxy.log
    assert "the answer is not JSON" in cinderbak.last_stderr
    assert "adopting it" in cinderbak.last_stderr


# -- a backup deleted while a restart waits for it -------------------------


def test_recovery_settles_a_backup_deleted_behind_our_back_at_once(
    stack, alice, admin, make_volume, cinderbak_config
):
    name = f"gone{uuid.uuid4().hex[:6]}"
    cinderbak = cinderbak_config(_policy(name, backup_timeout=3600))
    volume = make_volume(alice, metadata={tenant.POLICY: name})
    pgid = _backup_service_pgid(stack)
    os.killpg(pgid, signal.SIGSTOP)
    try:
        process = _start_run_once(cinderbak)
        journal = _journal(cinderbak)

        def acting():
            for run in journal.unfinished_runs(any_host=True):
                for step in run.steps or ():
                    if step.kind == steps.BACKUP_CREATE and step.resource_id:
                        return step
            return None

        step = wait_until(acting, 90, "the backup to be requested")
        process.kill()
        process.wait(30)
    finally:
        os.killpg(pgid, signal.SIGCONT)
    # While nobody watches, the backup finishes and an admin deletes it.
    backup = admin.block_storage.wait_for_status(
        admin.block_storage.get_backup(step.resource_id),
        status="available",
        failures=["error"],
        wait=180,
    )
    admin.block_storage.delete_backup(backup)

    def gone():
        return not [
            b
            for b in admin.block_storage.backups(
                all_projects=True, volume_id=volume.id
            )
            if b.id == step.resource_id
        ]

    wait_until(gone, 120, "the backup to be deleted", interval=1)
    started = time.monotonic()
    cinderbak.run("run-once", "--no-audit")
    took = time.monotonic() - started
    run = journal.get_run(step.run_id)
    journal.close()
    assert run.state is states.FAILED, run
    assert "vanished" in run.summary["error"], run.summary
    # Not a poll until backup_timeout (an hour): settled on sight.
    assert took < 120, took


def test_an_api_away_for_90_seconds_mid_run_is_waited_out(
    proxied, alice, admin, make_volume
):
    proxy, make = proxied
    name = f"away{uuid.uuid4().hex[:6]}"
    cinderbak = make(_policy(name, backup_timeout=900))
    volumes = [
        make_volume(alice, metadata={tenant.POLICY: name}) for _ in range(3)
    ]
    process = _start_run_once(cinderbak, output=subprocess.PIPE)

    def all_requested():
        posts = [e for e in proxy.log if e[:2] == ("POST", "/v3/backups")]
        return len(posts) == len(volumes)

    wait_until(all_requested, 120, "every backup to be requested")
    proxy.unreachable_until = time.monotonic() + 90
    out, err = process.communicate(timeout=900)
    rows = json.loads(out[out.find("[") :])
    assert process.returncode == 0, err[-3000:]
    assert [r["status"] for r in rows] == ["ok"] * 3, rows
    assert any(e[2] == "unreachable" for e in proxy.log)
    for volume in volumes:
        ours = _ours(admin, volume.id, cinderbak.deployment_id)
        assert [b.status for b in ours] == ["available"], ours
    assert "status poll failed" in err


# -- service ownership: each tenant held to its own caps --------------------


def test_service_ownership_holds_each_tenant_to_its_own_caps(
    alice, bob, admin, make_volume, cinderbak_config
):
    name = f"caps{uuid.uuid4().hex[:6]}"
    cinderbak = cinderbak_config(
        _policy(name, ownership="service")
        + "[limits]\nservice_backups_per_project = 2\n"
    )
    greedy = [
        make_volume(alice, metadata={tenant.POLICY: name}) for _ in range(3)
    ]
    modest = make_volume(bob, metadata={tenant.POLICY: name})
    rows = {r["volume_id"]: r for r in cinderbak.run("run-once", "--no-audit")}
    greedy_rows = [rows[v.id] for v in greedy]
    assert sorted(r["status"] for r in greedy_rows) == ["error", "ok", "ok"]
    (refused,) = [r for r in greedy_rows if r["status"] == "error"]
    assert (
        "over its cinderbak quota in the service project" in (refused["error"])
    ), refused
    assert "service_backups_per_project is 2" in refused["error"]
    # The other tenant is not made to pay for it.
    assert rows[modest.id]["status"] == "ok", rows[modest.id]
    # Counted from what exists: the next run refuses tenant-a's volumes
    # (it holds 2), and still backs up tenant-b's (it holds 1).
    again = {
        r["volume_id"]: r for r in cinderbak.run("run-once", "--no-audit")
    }
    assert {again[v.id]["status"] for v in greedy} == {"error"}
    assert again[modest.id]["status"] == "ok", again[modest.id]


# -- kill -9 of run-once at a step boundary ------------------------------


def _audit(admin, cinderbak, volume_id: str) -> dict[str, int]:
    """What a crash may leave behind; all must be zero."""
    journal = _journal(cinderbak)
    try:
        unfinished = len(journal.unfinished_runs(any_host=True))
    finally:
        journal.close()
    ours = _ours(admin, volume_id, cinderbak.deployment_id)
    snapshots = [
        s
        for s in admin.block_storage.snapshots(
            details=True, all_projects=True, volume_id=volume_id
        )
        if tenant.is_ours(s.metadata or {}, cinderbak.deployment_id)
    ]
    return {
        "temporary snapshots": len(snapshots),
        "backups not available": sum(b.status != "available" for b in ours),
        "unfinished runs": unfinished,
    }


@pytest.mark.parametrize(
    "mode, kind",
    [
        ("snapshot", steps.SNAPSHOT_CREATE),
        ("snapshot", steps.BACKUP_CREATE),
        ("volume", steps.BACKUP_CREATE),
    ],
)
def test_run_once_killed_at_a_step_is_settled_by_the_next_run_once(
    alice, admin, make_volume, cinderbak_config, mode, kind
):
    name = f"kill{uuid.uuid4().hex[:6]}"
    cinderbak = cinderbak_config(_policy(name, transfer_mode=mode))
    volume = make_volume(alice, metadata={tenant.POLICY: name})
    process = _start_run_once(cinderbak)
    journal = _journal(cinderbak)

    def step_with_id():
        for run in journal.unfinished_runs(any_host=True):
            for step in run.steps or ():
                if step.kind == kind and step.resource_id:
                    return step
        return None

    try:
        step = wait_until(step_with_id, 120, f"a {kind} step", interval=0.05)
    finally:
        process.kill()
        process.wait(30)
    slot = journal.get_run(step.run_id).scheduled_at
    journal.close()

    # The next run-once settles the killed one first, then backs up.
    cinderbak.run("run-once", "--no-audit")
    assert "recovery: settled 1 interrupted runs" in cinderbak.last_stdout
    journal = _journal(cinderbak)
    try:
        killed = journal.get_run(step.run_id)
    finally:
        journal.close()
    assert killed.is_final, killed
    if kind == steps.SNAPSHOT_CREATE:
        assert "before the backup was requested" in killed.summary["error"]
    else:
        assert killed.summary["status"] == "ok", killed.summary

    def settled():
        audit = _audit(admin, cinderbak, volume.id)
        return audit if not any(audit.values()) else None

    wait_until(settled, 120, "nothing left behind", interval=2)
    # At most one backup per (volume, slot).
    by_run = [
        b.metadata.get(tenant.RUN)
        for b in _ours(admin, volume.id, cinderbak.deployment_id)
    ]
    assert len(by_run) == len(set(by_run)), by_run
    assert f"{name}@{slot:%Y-%m-%dT%H:%M:%SZ}" in by_run or (
        kind == steps.SNAPSHOT_CREATE
    )


# -- a tenant forges our owner mark on its own backup ----------------------


def test_a_forged_owner_mark_is_never_chained_onto_nor_expired(
    alice, admin, make_volume, cinderbak_config, cleanup
):
    name = f"forge{uuid.uuid4().hex[:6]}"
    cinderbak = cinderbak_config(
        _policy(name, full_every=6).replace(
            "retention = last=9", "retention = last=1"
        )
    )
    volume = make_volume(alice, metadata={tenant.POLICY: name})
    (first,) = cinderbak.run("run-once", "--no-audit", check=True)
    assert first["kind"] == "full"
    forged = alice.block_storage.create_backup(
        volume_id=volume.id,
        name="tenant-manual",
        metadata={
            tenant.OWNER: cinderbak.deployment_id,
            tenant.POLICY: name,
        },
    )
    cleanup.add("backup", forged.id)
    forged = alice.block_storage.wait_for_status(
        forged, "available", failures=["error"], wait=300
    )
    assert forged.metadata.get(tenant.OWNER) == cinderbak.deployment_id
    (second,) = cinderbak.run("run-once", "--no-audit", check=True)
    # Cinder would chain onto the tenant's newer backup: a full instead.
    assert second["kind"] == "full", second
    # retention last=1: our first full may go, the forged one never.
    cinderbak.run("expire", "--policy", name)
    assert alice.block_storage.get_backup(forged.id).status == "available"
