"""`cinderbak verify` against the real stack: restore, compare, conclude.

A backup's source is checksummed on cluster A when the backup is done;
verification restores it over a scratch volume and compares. Corrupting
one object of the backup image on cluster B (a raw RADOS write, as a
failing disk or a bug would) must fail verification loudly while the
backup itself is kept.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import threading
import time
import urllib.request
import uuid

import pytest
import rbd

from cinderbak import recovery
from tests import configs, localstack
from tests.functional.conftest import CINDERBAK, free_port
from tests.functional.test_daemon import Daemons, wait_until
from tests.functional.test_run_once import _pattern

MIB = 1024 * 1024


def _policy(stack, tmp_path, name: str, transfer_mode: str) -> str:
    ceph_a = stack.ceph("a")
    readonly = stack.readonly_user
    return f"""
        [volume_cluster]
        conf = {ceph_a.conf}
        user = {readonly.user}
        keyring = {readonly.keyring}
        pools = {ceph_a.pool}
        [verify]
        scratch_dir = {tmp_path}/scratch
        [policy:{name}]
        schedule = every 1d
        transfer_mode = {transfer_mode}
        verify_sample = 1
        """


def _backed_up(cinderbak, name: str, volume_id: str) -> dict:
    rows = cinderbak.run(
        "run-once", "--policy", name, "--no-audit", check=True
    )
    (row,) = [r for r in rows if r["volume_id"] == volume_id]
    assert row["status"] == "ok", row
    return row


def _scratch_volumes(admin, backup_id: str) -> list:
    return [
        v
        for v in admin.block_storage.volumes(all_projects=True)
        if v.name == f"cinderbak-verify-{backup_id}"
    ]


def _corrupt_backup_object(stack, backup_id: str) -> str:
    """Overwrite 4 KiB of the first data object of the backup's image on
    cluster B, below RBD (no snapshot context: the snapshot that holds the
    backup reads the damaged object). Return the object's name."""
    image, _snap = localstack.backup_snapshot(stack, backup_id)
    with localstack.ioctx(stack, "b") as io:
        with rbd.Image(io, image, read_only=True) as img:
            prefix = img.block_name_prefix()
        name = f"{prefix}.{0:016x}"
        io.write(name, b"\xde\xad\xbe\xef" * 1024, 8192)
    return name


@dataclasses.dataclass(frozen=True)
class BackedUp:
    name: str  # the policy, unique to the test
    cinderbak: object  # the CLI runner with the test's config
    volume_id: str
    backup_id: str


@pytest.fixture
def backed_up(stack, alice, make_volume, cinderbak_config, tmp_path):
    """Opt a new volume of alice's in to a policy of the test's own, write
    ``writes`` (offset, bytes) into it, back it up with run-once."""

    def make(mode: str, writes, extra: str = "") -> BackedUp:
        name = f"vf-{uuid.uuid4().hex[:8]}"
        cinderbak = cinderbak_config(
            _policy(stack, tmp_path, name, mode) + extra
        )
        volume = make_volume(alice, metadata={"cinderbak:policy": name})
        for offset, data in writes:
            localstack.write_volume(stack, volume.id, offset, data)
        row = _backed_up(cinderbak, name, volume.id)
        return BackedUp(name, cinderbak, volume.id, row["backup_id"])

    return make


def test_verify_passes_then_catches_a_corrupted_backup_and_keeps_it(
    stack, alice, admin, backed_up, consumer
):
    topic, received = consumer
    made = backed_up(
        "volume",
        [(0, _pattern("v0", 16 * MIB)), (600 * MIB, _pattern("v1", 4 * MIB))],
        f"""
        [oslo_messaging_notifications]
        driver = messagingv2
        topics = {topic}
        transport_url = {stack.raw["rabbitmq_url"]}
        """,
    )
    cinderbak, backup_id = made.cinderbak, made.backup_id
    marks = alice.block_storage.get_backup(backup_id).metadata
    assert marks["cinderbak:checksum"].startswith("sha256-4MiB:1073741824:")

    (row,) = cinderbak.run("verify", backup_id)
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert (row["result"], row["content"]) == ("ok", "match"), row
    assert row["filesystem"] == "not-checked"  # raw data, no filesystem
    assert row["restore_mib_s"] > 0 and row["check_mib_s"] > 0
    verified = alice.block_storage.get_backup(backup_id).metadata
    assert verified["cinderbak:verified"].startswith("ok ")
    assert _scratch_volumes(admin, backup_id) == []

    _corrupt_backup_object(stack, backup_id)
    (row,) = cinderbak.run("verify", backup_id)
    assert cinderbak.last_returncode == 1
    assert (row["result"], row["content"]) == ("failed", "MISMATCH"), row
    assert "VERIFICATION FAILED" in cinderbak.last_stderr
    assert backup_id in cinderbak.last_stderr
    kept = alice.block_storage.get_backup(backup_id)
    assert kept.status == "available"
    assert kept.metadata["cinderbak:verified"].startswith("failed ")
    assert "MISMATCH" in kept.metadata["cinderbak:verified"]
    assert _scratch_volumes(admin, backup_id) == []

    # Each verdict was notified, with the backup's project.
    def both():
        verdicts = received.of("cinderbak.verify.end") + received.of(
            "cinderbak.verify.error"
        )
        return verdicts if len(verdicts) >= 2 else None

    wait_until(both, 30, "the verification notifications")
    [good] = received.of("cinderbak.verify.end")
    [bad] = received.of("cinderbak.verify.error")
    for payload in (good, bad):
        assert payload["backup_id"] == backup_id
        assert payload["volume_id"] == made.volume_id
        assert payload["project_id"] == stack.projects["tenant-a"]
        assert payload["cinderbak_version"] == "1.0"
    assert (good["result"], bad["result"]) == ("ok", "failed")
    assert bad["content"] == "MISMATCH"


def test_policy_pass_checks_the_filesystem_of_a_snapshot_mode_backup(
    admin, backed_up, tmp_path
):
    fs_image = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "64M", str(fs_image)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "vfs", str(fs_image)], check=True
    )
    made = backed_up("snapshot", [(0, fs_image.read_bytes())])
    cinderbak, backup_id = made.cinderbak, made.backup_id

    rows = cinderbak.run("verify", "--policy", made.name)
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    (row,) = [r for r in rows if r["backup_id"] == backup_id]
    assert (row["result"], row["content"], row["filesystem"]) == (
        "ok",
        "match",
        "clean",
    ), row
    assert _scratch_volumes(admin, backup_id) == []


def test_start_up_recovery_deletes_the_scratch_volume_of_a_killed_verify(
    alice, admin, backed_up
):
    made = backed_up("volume", [(0, _pattern("k0", 64 * MIB))])
    cinderbak, backup_id = made.cinderbak, made.backup_id

    verifying = subprocess.Popen(
        [
            str(CINDERBAK),
            "--config-file",
            str(cinderbak.path),
            "verify",
            backup_id,
        ],
        env=cinderbak.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not _scratch_volumes(admin, backup_id):
            assert verifying.poll() is None, "verify ended before the kill"
            assert time.monotonic() < deadline, "no scratch volume appeared"
            time.sleep(0.2)
    finally:
        verifying.send_signal(signal.SIGKILL)
        verifying.wait()
    assert _scratch_volumes(admin, backup_id), "the kill came too late"

    parts = configs.parts_from(cinderbak.path)
    try:
        recovery.recover(parts, threading.Event())
        (run,) = parts.journal.runs(policy=f"verify:{made.name}")
    finally:
        parts.close()
    assert _scratch_volumes(admin, backup_id) == []
    assert run.state == "failed" and "interrupted" in run.summary["error"]
    backup = alice.block_storage.get_backup(backup_id)
    assert backup.status == "available"
    assert "cinderbak:verified" not in backup.metadata


def test_daemon_verifies_on_its_schedule_and_exports_metrics(
    alice, backed_up, clouds_env, tmp_path
):
    port = free_port()
    made = backed_up(
        "volume",
        [(0, _pattern("d0", 8 * MIB))],
        f"""
        verify_schedule = every 10s
        [metrics]
        port = {port}
        """,
    )
    name, cinderbak, backup_id = made.name, made.cinderbak, made.backup_id
    # The backup schedule (daily) does not fire during the test; the
    # verification schedule does.
    daemons = Daemons(tmp_path, clouds_env)
    try:
        daemon = daemons.start(cinderbak)
        journal = daemons.journal()
        (run,) = wait_until(
            lambda: [
                r for r in journal.runs(policy=f"verify:{name}") if r.is_final
            ],
            120,
            "a scheduled verification",
            daemon=daemon,
        )
        assert run.target == backup_id and run.summary["result"] == "ok", run
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10
        ) as answer:
            exported = answer.read().decode()
        assert (
            f'cinderbak_verifications_total{{policy="{name}",result="ok"}}'
            in exported
        ), exported
        marks = alice.block_storage.get_backup(backup_id).metadata
        assert marks["cinderbak:verified"].startswith("ok ")
        assert daemon.stop() == 0
    finally:
        daemons.kill_all()


def test_a_tenants_forged_checksum_is_trusted_only_after_journal_loss(
    alice, backed_up, tmp_path
):
    made = backed_up("volume", [(0, _pattern("forged", 8 * MIB))])
    cinderbak, backup_id = made.cinderbak, made.backup_id
    marks = alice.block_storage.get_backup(backup_id).metadata
    algorithm, size, digest = marks["cinderbak:checksum"].split(":")
    forged = f"{algorithm}:{size}:{'0' * len(digest)}"
    # The tenant owns the backup (project mode) and rewrites the mark.
    alice.block_storage.put(
        f"/backups/{backup_id}",
        json={"backup": {"metadata": marks | {"cinderbak:checksum": forged}}},
        microversion="3.43",
    ).raise_for_status()

    # The journal recorded the real checksum: the forgery changes nothing.
    (row,) = cinderbak.run("verify", backup_id)
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert (row["result"], row["content"]) == ("ok", "match"), row

    # Journal lost: only the mark is left, and the verdict says so; a
    # mismatch against an unbacked mark warns, it does not fail.
    (tmp_path / "journal.sqlite").unlink()
    (row,) = cinderbak.run("verify", backup_id)
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert (row["result"], row["content"]) == ("warning", "MISMATCH"), row
    assert "which the journal does not back" in row["problems"], row
    assert "VERIFICATION FAILED" not in cinderbak.last_stderr


def test_the_sample_follows_the_journal_not_a_tenants_verified_mark(
    stack, alice, make_volume, cinderbak_config, tmp_path
):
    name = f"vs-{uuid.uuid4().hex[:8]}"
    cinderbak = cinderbak_config(_policy(stack, tmp_path, name, "volume"))
    volumes = [
        make_volume(alice, metadata={"cinderbak:policy": name})
        for _ in range(2)
    ]
    for number, volume in enumerate(volumes):
        localstack.write_volume(
            stack, volume.id, 0, _pattern(f"s{number}", 4 * MIB)
        )
    rows = cinderbak.run(
        "run-once", "--policy", name, "--no-audit", check=True
    )
    backups = {row["backup_id"] for row in rows}
    assert len(backups) == 2, rows

    (first,) = cinderbak.run("verify", "--policy", name)
    assert first["result"] == "ok", first
    (other,) = backups - {first["backup_id"]}
    # The tenant marks its other backup as verified tomorrow, so that a
    # choice by the marks would keep re-verifying the first one.
    marks = alice.block_storage.get_backup(other).metadata
    tomorrow = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400)
    )
    alice.block_storage.put(
        f"/backups/{other}",
        json={
            "backup": {
                "metadata": marks
                | {"cinderbak:verified": f"ok {tomorrow} content=match"}
            }
        },
        microversion="3.43",
    ).raise_for_status()

    (second,) = cinderbak.run("verify", "--policy", name)
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert second["backup_id"] == other, (first, second)
