"""Fixtures of the integration suite: any cloud with a running cinderbak.

The suite talks only to the cloud's APIs, as an admin and as a tenant
named by environment variables (clouds.yaml names):

===========================  ===============================================
CINDERBAK_IT_ADMIN_CLOUD     admin cloud (required)
CINDERBAK_IT_TENANT_CLOUD    tenant cloud; its project opts volumes in
                             (required)
CINDERBAK_IT_POLICY          policy the daemon runs, with a short schedule
                             (required; e.g. "every 1m")
CINDERBAK_IT_RUNS            scheduled backups to wait for before checking
                             retention (default 3)
CINDERBAK_IT_KEEP            most backups of the volume retention may keep
                             after those runs: the policy's ``last=N`` plus
                             the older backups of the chain the kept
                             incrementals depend on (at most N + full_every
                             count); must be below CINDERBAK_IT_RUNS
                             (retention test skipped when unset)
CINDERBAK_IT_EXPIRE_COMMAND  run after each scheduled backup when expiry is
                             a separate job (e.g. "cinderbak expire")
CINDERBAK_IT_TIMEOUT         seconds to wait for one scheduled backup
                             (default 600)
CINDERBAK_IT_RBD             a stack.json (tools/localstack) for direct RBD
                             access: data is written and compared by md5
===========================  ===============================================

Without the three required variables every test is skipped, saying so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import openstack
import pytest

REQUIRED = (
    "CINDERBAK_IT_ADMIN_CLOUD",
    "CINDERBAK_IT_TENANT_CLOUD",
    "CINDERBAK_IT_POLICY",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    admin_cloud: str
    tenant_cloud: str
    policy: str
    runs: int
    keep: int | None
    expire_command: str | None
    timeout: float
    rbd: str | None

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        keep = env.get("CINDERBAK_IT_KEEP")
        return cls(
            admin_cloud=env["CINDERBAK_IT_ADMIN_CLOUD"],
            tenant_cloud=env["CINDERBAK_IT_TENANT_CLOUD"],
            policy=env["CINDERBAK_IT_POLICY"],
            runs=int(env.get("CINDERBAK_IT_RUNS", "3")),
            keep=int(keep) if keep else None,
            expire_command=env.get("CINDERBAK_IT_EXPIRE_COMMAND") or None,
            timeout=float(env.get("CINDERBAK_IT_TIMEOUT", "600")),
            rbd=env.get("CINDERBAK_IT_RBD") or None,
        )


def pytest_collection_modifyitems(config, items):
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if not missing:
        return
    skip = pytest.mark.skip(
        reason="integration suite needs a cloud and a running cinderbak "
        f"daemon: set {', '.join(missing)} (see tests/integration/"
        "conftest.py)"
    )
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


def _connect(cloud: str):
    return openstack.connect(cloud=cloud, block_storage_api_version="3")


@pytest.fixture(scope="session")
def admin(settings):
    conn = _connect(settings.admin_cloud)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def tenant(settings):
    conn = _connect(settings.tenant_cloud)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def rbd_stack(settings):
    """The stack description for direct RBD access, or None."""
    if not settings.rbd:
        return None
    from tests import localstack

    with open(settings.rbd, encoding="utf-8") as f:
        return localstack.Stack(raw=json.load(f), path=settings.rbd)


class Cleanup:
    """Deletes what the suite created, and the backups the daemon made of
    it, as the admin, even after a failure; problems are printed, and the
    rest is still cleaned."""

    def __init__(self, admin) -> None:
        self.storage = admin.block_storage
        self.volumes: list[str] = []

    def volume(self, volume_id: str) -> str:
        self.volumes.append(volume_id)
        return volume_id

    def run(self) -> list[str]:
        problems = []
        # Opt-outs first, so the daemon starts nothing new meanwhile.
        for volume_id in self.volumes:
            try:
                self.storage.delete_volume_metadata(
                    volume_id, keys=["cinderbak:policy"]
                )
            except Exception as exc:
                problems.append(f"opt-out of {volume_id}: {exc}")
        for volume_id in reversed(self.volumes):
            try:
                self._delete_backups_of(volume_id)
                volume = self.storage.find_volume(
                    volume_id, ignore_missing=True, all_projects=True
                )
                if volume is not None:
                    self.storage.wait_for_status(
                        volume,
                        status="available",
                        failures=["error"],
                        wait=300,
                    )
                    self.storage.delete_volume(volume_id, cascade=True)
                    self.storage.wait_for_delete(volume, wait=300)
            except Exception as exc:
                problems.append(f"volume {volume_id}: {exc}")
        for problem in problems:
            print(f"cleanup: {problem}")
        return problems

    def _delete_backups_of(self, volume_id: str) -> None:
        """Every backup of the volume, any project, dependents first."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            found = list(
                self.storage.backups(
                    details=True, volume_id=volume_id, all_projects=True
                )
            )
            if not found:
                return
            for backup in found:
                if backup.status in ("available", "error") and not (
                    backup.has_dependent_backups
                ):
                    self.storage.delete_backup(backup, ignore_missing=True)
            time.sleep(2)
        raise TimeoutError(f"backups of volume {volume_id} not deleted")
