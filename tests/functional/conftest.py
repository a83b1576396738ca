"""Fixtures for tests against the real local stack (tools/localstack)."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import openstack
import oslo_messaging
import pytest
import sqlalchemy as sa
from oslo_config import cfg

from tests import localstack

ROOT = pathlib.Path(__file__).resolve().parents[2]
CINDERBAK = pathlib.Path(sys.executable).with_name("cinderbak")


@pytest.fixture(scope="session")
def stack() -> localstack.Stack:
    """The local stack, started if needed; clouds.yaml made the default."""
    described = localstack.ensure_up()
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(described.clouds_yaml)
    return described


@pytest.fixture(scope="session")
def clouds_env(stack) -> dict[str, str]:
    return dict(os.environ, OS_CLIENT_CONFIG_FILE=str(stack.clouds_yaml))


def _session_cloud(name: str):
    """Yield a connection for the whole session, closed at its end."""
    conn = openstack.connect(cloud=name, block_storage_api_version="3")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def admin(stack):
    yield from _session_cloud("localstack-admin")


@pytest.fixture(scope="session")
def alice(stack):
    """Member of tenant-a."""
    yield from _session_cloud("localstack-tenant-a")


@pytest.fixture(scope="session")
def bob(stack):
    """Member of tenant-b."""
    yield from _session_cloud("localstack-tenant-b")


@pytest.fixture(scope="session")
def carol(stack):
    """Member of tenant-c, where the cinderbak user has no role."""
    yield from _session_cloud("localstack-tenant-c")


class Cleanup:
    """Deletes what a test created, newest first, even when it failed."""

    def __init__(self, admin) -> None:
        self.admin = admin
        self.items: list[tuple[str, str]] = []

    def add(self, kind: str, resource_id: str) -> None:
        self.items.append((kind, resource_id))

    def run(self) -> None:
        """Volumes are cleaned together: every volume's backups are deleted
        in the same rounds (leaves first), so a test with twenty volumes
        waits for its longest chain, not for the sum of them."""
        storage = self.admin.block_storage
        volumes: list[str] = []
        for kind, resource_id in reversed(self.items):
            if kind != "volume":
                continue
            try:
                volume = storage.find_volume(
                    resource_id, ignore_missing=True, all_projects=True
                )
                if volume is None:
                    continue
                for attachment in storage.attachments(
                    volume_id=resource_id, all_projects=True
                ):
                    storage.delete_attachment(attachment)
                volumes.append(resource_id)
            except Exception as exc:  # report, keep cleaning the rest
                print(f"cleanup of volume {resource_id} failed: {exc}")
        try:
            self._delete_backups_of(set(volumes))
        except Exception as exc:
            print(f"cleanup of the backups of {len(volumes)} volumes: {exc}")
        for resource_id in volumes:
            try:
                storage.wait_for_status(
                    storage.get_volume(resource_id),
                    status="available",
                    failures=["error"],
                    wait=120,
                )
                storage.delete_volume(resource_id, cascade=True)
            except Exception as exc:
                print(f"cleanup of volume {resource_id} failed: {exc}")
        for kind, resource_id in reversed(self.items):
            if kind == "backup":
                try:
                    storage.delete_backup(resource_id, ignore_missing=True)
                except Exception as exc:
                    print(f"cleanup of backup {resource_id} failed: {exc}")

    def _delete_backups_of(self, volume_ids: set[str]) -> None:
        """Delete every backup of these volumes, dependents before parents;
        one listing a round serves every volume."""
        if not volume_ids:
            return
        storage = self.admin.block_storage
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = [
                backup
                for backup in storage.backups(all_projects=True)
                if backup.volume_id in volume_ids
            ]
            if not found:
                return
            creating = {b.volume_id for b in found if b.status == "creating"}
            for backup in found:
                # A parent deleted under a child still creating leaves the
                # child in error for good (its parent is gone): a volume
                # with a backup still creating waits.
                if (
                    backup.volume_id not in creating
                    and backup.status in ("available", "error")
                    and not backup.has_dependent_backups
                ):
                    storage.delete_backup(backup, ignore_missing=True)
            time.sleep(2)
        raise TimeoutError(
            f"backups of volumes {sorted(volume_ids)} not deleted"
        )


@pytest.fixture
def cleanup(admin):
    tracker = Cleanup(admin)
    yield tracker
    tracker.run()


@pytest.fixture
def make_volume(cleanup):
    """Create a volume as the given tenant; it is deleted after the test."""

    def make(conn, *, size=1, metadata=None, name=None):
        volume = conn.block_storage.create_volume(
            size=size,
            name=name or f"ft-{uuid.uuid4().hex[:8]}",
            metadata=metadata or {},
        )
        cleanup.add("volume", volume.id)
        return conn.block_storage.wait_for_status(
            volume, status="available", failures=["error"], wait=120
        )

    return make


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cinderbak:
    """Runs the real `cinderbak` command against a config of the test's."""

    def __init__(self, path: pathlib.Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env

    def run(self, *args: str, check: bool = False) -> list[dict]:
        result = subprocess.run(
            [
                str(CINDERBAK),
                "--config-file",
                str(self.path),
                *args,
                "-f",
                "json",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"cinderbak {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        start = result.stdout.find("[")
        self.last_stderr = result.stderr
        self.last_stdout = result.stdout
        self.last_returncode = result.returncode
        return json.loads(result.stdout[start:]) if start >= 0 else []


def config_text(
    tmp_path, deployment: str, defaults: str = "", cloud: str = ""
) -> str:
    """The sections every test config has: its own deployment id (so no
    test sees another's backups as ours), state and journal under
    ``tmp_path``, then ``defaults`` in [DEFAULT] and ``cloud`` in [cloud].
    """
    return (
        f"[DEFAULT]\ndeployment_id = {deployment}\npoll_interval = 1\n"
        f"state_path = {tmp_path}/state\n{defaults}"
        f"[cloud]\n{cloud}"
        f"[journal]\nconnection = sqlite:///{tmp_path}/journal.sqlite\n"
    )


@pytest.fixture
def cinderbak_config(tmp_path, clouds_env):
    """Write a cinderbak config; return a runner for the CLI with it."""

    def write(policies: str, **defaults: str) -> Cinderbak:
        deployment = defaults.pop("deployment_id", f"ft-{uuid.uuid4().hex}")
        text = config_text(
            tmp_path,
            deployment,
            "write_back_status = true\n"
            + "".join(f"{key} = {value}\n" for key, value in defaults.items()),
            "cloud = localstack-cinderbak\napi_retries = 2\n",
        ) + textwrap.dedent(policies)
        path = tmp_path / "cinderbak.conf"
        path.write_text(text)
        runner = Cinderbak(path, clouds_env)
        runner.deployment_id = deployment
        return runner

    return write


class Received:
    """oslo.messaging notification endpoint: keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()

    def _keep(self, priority, event_type, payload) -> None:
        with self.lock:
            self.events.append((priority, event_type, payload))

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._keep("info", event_type, payload)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._keep("error", event_type, payload)

    def of(self, event_type: str) -> list[dict]:
        with self.lock:
            return [p for _, e, p in self.events if e == event_type]


@pytest.fixture
def consumer(stack):
    """A listener on a topic of this test's own, on the stack's RabbitMQ."""
    topic = f"cinderbak-ft-{uuid.uuid4().hex[:8]}"
    conf = cfg.ConfigOpts()
    conf([], project="ft", default_config_files=[])
    transport = oslo_messaging.get_notification_transport(
        conf, url=stack.raw["rabbitmq_url"]
    )
    received = Received()
    listener = oslo_messaging.get_notification_listener(
        transport,
        [oslo_messaging.Target(topic=topic)],
        [received],
        executor="threading",
    )
    listener.start()
    yield topic, received
    listener.stop()
    listener.wait()
    transport.cleanup()


@contextlib.contextmanager
def pg_schema_url(base: str, prefix: str):
    """A URL on the PostgreSQL at ``base`` whose connections use a schema
    of their own, dropped afterwards: a journal no other test sees."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            sa.make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
