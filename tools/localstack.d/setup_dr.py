"""Make the DR region known and wait until its Cinder is up.

Idempotent: region RegionDR, block-storage endpoints there, no backup
quota for the tenant projects there (an import counts like a create), the admin
user's admin role in each tenant project (Cinder's import_record gives the
imported backup the project of the caller's token, so keeping a backup's
project means importing scoped to it, as an admin: see
doc/source/dr.rst), and the localstack-dr-* clouds merged into
clouds.yaml. Runs in the keystone venv (openstacksdk, PyYAML).
"""

import os
import sys
import time

import lsconf
import openstack
import yaml
from setup_keystone import cloud_config, connect, write_private

REGION = "RegionDR"
URL = os.environ["LS_CINDER_DR_URL"]
TENANTS = ["tenant-a", "tenant-b", "tenant-c"]
# cloud name -> (user, project), all in region RegionDR
CLOUDS = {
    "localstack-dr-admin": ("admin", "admin"),
    "localstack-dr-cinderbak": ("cinderbak", "service"),
    "localstack-dr-tenant-a": ("alice", "tenant-a"),
    "localstack-dr-tenant-b": ("bob", "tenant-b"),
}
SERVICES = ("cinder-scheduler", "cinder-volume", "cinder-backup")


def dr_config(user: str, project: str, password: str) -> dict:
    config = cloud_config(user, project, password)
    config["region_name"] = REGION
    return config


def keystone(pw: dict[str, str]) -> list[str]:
    """Region, endpoints, role grants; return the tenant project ids."""
    idc = connect(cloud_config("admin", "admin", pw["admin"])).identity
    if idc.find_region(REGION) is None:
        idc.create_region(id=REGION, description="localstack DR region")
    for stype in ("block-storage", "volumev3"):
        service = next(iter(idc.services(type=stype)))
        have = set()
        for e in idc.endpoints(service_id=service.id, region_id=REGION):
            have.add(e.interface)
            if e.url != URL:  # the port map moved
                idc.update_endpoint(e, url=URL)
        for interface in ("public", "internal", "admin"):
            if interface not in have:
                idc.create_endpoint(
                    service_id=service.id,
                    interface=interface,
                    url=URL,
                    region_id=REGION,
                )
    admin = idc.find_user("admin", ignore_missing=False, domain_id="default")
    role = idc.find_role("admin", ignore_missing=False)
    ids = []
    for name in TENANTS:
        project = idc.find_project(
            name, ignore_missing=False, domain_id="default"
        )
        idc.assign_project_role_to_user(project, admin, role)
        ids.append(project.id)
    return ids


def clouds(pw: dict[str, str]) -> None:
    with open(lsconf.CLOUDS_YAML, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    for name, (user, project) in CLOUDS.items():
        data["clouds"][name] = dr_config(user, project, pw[user])
    write_private(lsconf.CLOUDS_YAML, yaml.safe_dump(data, sort_keys=False))


def services_up(conn: openstack.connection.Connection) -> bool:
    resp = conn.block_storage.get(
        "/os-services", microversion="3.0", raise_exc=True
    )
    states = {s["binary"]: s["state"] for s in resp.json()["services"]}
    return all(states.get(b) == "up" for b in SERVICES)


def unlimited_backups(
    conn: openstack.connection.Connection, projects: list[str]
) -> None:
    """A DR region takes every backup of a project at once: an import
    reserves backup quota like a create, so the defaults (10 backups)
    would refuse most of a real catalog."""
    for project_id in projects:
        conn.block_storage.put(
            f"/os-quota-sets/{project_id}",
            json={"quota_set": {"backups": -1, "backup_gigabytes": -1}},
            raise_exc=True,
        )


def main() -> None:
    pw = lsconf.passwords()
    projects = keystone(pw)
    clouds(pw)
    conn = connect(dr_config("admin", "admin", pw["admin"]))
    deadline = time.monotonic() + 240
    last: object = None
    while time.monotonic() < deadline:
        try:
            if services_up(conn):
                break
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(1)
    else:
        sys.exit(f"timed out waiting for the DR region's services ({last!r})")
    unlimited_backups(conn, projects)
    print("DR region up", flush=True)


if __name__ == "__main__":
    main()
