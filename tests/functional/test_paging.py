"""Listings in a region whose Cinder serves short pages.

Cinder caps every page at its ``osapi_max_limit`` whatever ``limit`` a
client asks for, and links the next page when a page is full. Here a
second, real ``cinder-api`` of the stack (same database, message bus and
services) runs with ``osapi_max_limit = 1``, and cinderbak's Block
Storage calls go to it: discovery, a project's backup history and a run's
polls all span several pages, each shorter than the limit cinderbak asks.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import yaml
from oslo_config import cfg

from cinderbak import listing, opts
from cinderbak.cloud import Cloud
from tests.functional.conftest import Cinderbak, config_text, free_port

VOLUMES = 3


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - local
            return True
    except urllib.error.HTTPError:
        return True  # it answers, if only to say no
    except OSError:
        return False


@pytest.fixture
def capped_cinder(stack, tmp_path) -> Iterator[str]:
    """The URL of a real cinder-api that serves one item per page."""
    cinder = stack.raw["cinder"]
    port = free_port()
    logs = tmp_path / "capped-cinder"
    logs.mkdir()
    override = tmp_path / "capped-cinder.conf"
    override.write_text(
        "[DEFAULT]\n"
        f"osapi_volume_listen_port = {port}\n"
        "osapi_max_limit = 1\n"
        f"log_dir = {logs}\n"
    )
    venv = pathlib.Path(cinder["venv"])
    out = (logs / "cinder-api.out").open("w")
    process = subprocess.Popen(
        [
            str(venv / "bin" / "cinder-api"),
            "--config-file",
            cinder["conf"],
            "--config-file",
            str(override),
        ],
        env=dict(
            os.environ,
            PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
            PYTHONWARNINGS="ignore",
        ),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _answers(url + "/"):
            assert process.poll() is None, (
                logs / "cinder-api.out"
            ).read_text()
            assert time.monotonic() < deadline, "capped cinder-api silent"
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        out.close()


@pytest.fixture
def capped_cinderbak(stack, tmp_path, capped_cinder):
    """A cinderbak config for one fresh policy, its Block Storage calls
    going to the capped cinder-api."""
    clouds = yaml.safe_load(pathlib.Path(stack.clouds_yaml).read_text())
    cloud = dict(clouds["clouds"]["localstack-cinderbak"])
    cloud["block_storage_endpoint_override"] = capped_cinder + "/v3"
    clouds["clouds"]["capped"] = cloud
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(clouds))
    path.chmod(0o600)
    policy = f"paged{uuid.uuid4().hex[:8]}"
    conf = tmp_path / "cinderbak.conf"
    conf.write_text(
        config_text(
            tmp_path,
            f"ft-{uuid.uuid4().hex}",
            "write_back_status = true\n",
            "cloud = capped\napi_retries = 2\n",
        )
        + f"[policy:{policy}]\nschedule = every 1h\nretention = last=7\n"
        "full_every = 6\n"
    )
    runner = Cinderbak(conf, dict(os.environ, OS_CLIENT_CONFIG_FILE=str(path)))
    return runner, policy, path


def _cloud(cinderbak: Cinderbak, clouds: pathlib.Path, monkeypatch) -> Cloud:
    """cinderbak's own Cloud, in this process, with the test's config."""
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(["--config-file", str(cinderbak.path)], project="cinderbak")
    return Cloud(conf)


def test_every_page_is_read_when_cinder_serves_fewer_than_asked(
    stack, alice, admin, make_volume, capped_cinderbak, monkeypatch
):
    cinderbak, policy, clouds = capped_cinderbak
    volumes = [
        make_volume(alice, metadata={"cinderbak:policy": policy})
        for _ in range(VOLUMES)
    ]
    ids = {v.id for v in volumes}
    # Discovery (volumes), the project's history and the run's polls
    # (backups) each take several one-item pages.
    rows = cinderbak.run("run-once", "--no-audit", check=True)
    done = {r["volume_id"]: r for r in rows if r["volume_id"] in ids}
    assert done.keys() == ids, rows
    assert {r["status"] for r in done.values()} == {"ok"}, rows
    backups = {r["backup_id"] for r in done.values()}
    assert len(backups) == VOLUMES
    # A second backup of each volume: a volume's history spans pages.
    again = cinderbak.run("run-once", "--no-audit", check=True)
    backups |= {r["backup_id"] for r in again if r["volume_id"] in ids}
    assert len(backups) == 2 * VOLUMES

    # The plan reads the project's backups page by page: every backup
    # of every volume is there, none twice.
    plan = cinderbak.run("plan", "--policy", policy, check=True)
    planned = [r["backup_id"] for r in plan]
    assert sorted(planned) == sorted(backups), plan
    assert {r["volume_id"] for r in plan} == ids

    # Planning takes the history in batches of whole volumes, from a
    # listing Cinder sorts by volume: with one-item pages and batches of
    # one volume, each volume's two backups still arrive together.
    cloud = _cloud(cinderbak, clouds, monkeypatch)
    batches = [
        batch
        for _began, batch in listing.backups_by_volume(
            cloud, stack.projects["tenant-a"], size=1
        )
    ]
    batched = [v for batch in batches for v in batch]
    assert len(batched) == len(set(batched)), "a volume in two batches"
    for batch in batches:
        for volume_id in ids & batch.keys():
            assert {b["id"] for b in batch[volume_id]} == {
                r["backup_id"]
                for r in (*rows, *again)
                if r["volume_id"] == volume_id
            }
    assert ids <= set(batched)

    # A backup deleted between two pages: the next page's marker is gone
    # (Cinder answers 404). The listing starts again and yields each
    # remaining backup once.
    listed = listing.project_backups(cloud, stack.projects["tenant-a"])
    # Newest first: this test's backups lead (the project may hold other
    # tests' backups after them).
    first = next(listed)  # the first one-item page
    assert first["id"] in backups
    admin.block_storage.delete_backup(first["id"])
    admin.block_storage.wait_for_delete(
        admin.block_storage.get_backup(first["id"]), wait=300
    )
    rest = [item["id"] for item in listed]
    assert len(rest) == len(set(rest)), "an item yielded twice"
    assert sorted(backups & set(rest)) == sorted(backups - {first["id"]})
