"""Create the projects, users, role assignments and block-storage catalog
entries of the local stack, then write clouds.yaml and keystone/ids.json.

Idempotent: everything is found or created, and passwords are (re)set to
the ones in secrets.env. Runs in the keystone venv (openstacksdk, PyYAML).
"""

import json
import os

import lsconf
import openstack
import yaml

PROJECTS = ["service", "tenant-a", "tenant-b", "tenant-c"]

# user -> (default project, [(project, role), ...])
USERS = {
    # keystonemiddleware in cinder; also sends service tokens ('service' role)
    "cinder": ("service", [("service", "admin"), ("service", "service")]),
    # the daemon's service user: admin in 'service', member in tenant-a/b
    # so it can act scoped to them; deliberately no role on tenant-c
    "cinderbak": (
        "service",
        [("service", "admin"), ("tenant-a", "member"), ("tenant-b", "member")],
    ),
    "alice": ("tenant-a", [("tenant-a", "member")]),
    "bob": ("tenant-b", [("tenant-b", "member")]),
    "carol": ("tenant-c", [("tenant-c", "member")]),
}

# catalog: openstacksdk looks up 'block-storage' (official type) and falls
# back to its aliases (volumev3, ...); python-cinderclient looks for volumev3.
SERVICES = [("cinder", "block-storage"), ("cinderv3", "volumev3")]


def cloud_config(user: str, project: str, password: str) -> dict:
    return {
        "auth": {
            "auth_url": lsconf.KEYSTONE_URL,
            "username": user,
            "password": password,
            "project_name": project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": lsconf.REGION,
        "interface": "public",
        "identity_api_version": "3",
        "block_storage_api_version": "3",
        "volume_api_version": "3",
    }


def connect(config: dict) -> openstack.connection.Connection:
    return openstack.connect(
        load_yaml_config=False, load_envvars=False, **config
    )


def write_private(path: str, text: str) -> None:
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main() -> None:
    pw = lsconf.passwords()
    conn = connect(cloud_config("admin", "admin", pw["admin"]))
    idc = conn.identity

    projects = {
        "admin": idc.find_project(
            "admin", ignore_missing=False, domain_id="default"
        )
    }
    for name in PROJECTS:
        projects[name] = idc.find_project(
            name, domain_id="default"
        ) or idc.create_project(
            name=name, domain_id="default", description="localstack"
        )

    roles = {}
    for name in ("admin", "member", "reader", "service"):
        roles[name] = idc.find_role(name) or idc.create_role(name=name)

    users = {
        "admin": idc.find_user(
            "admin", ignore_missing=False, domain_id="default"
        )
    }
    for name, (default_project, assignments) in USERS.items():
        user = idc.find_user(name, domain_id="default")
        if user is None:
            user = idc.create_user(
                name=name,
                password=pw[name],
                domain_id="default",
                default_project_id=projects[default_project].id,
            )
        else:
            user = idc.update_user(user, password=pw[name])
        users[name] = user
        for project, role in assignments:
            idc.assign_project_role_to_user(
                projects[project], user, roles[role]
            )

    for name, stype in SERVICES:
        service = next(
            iter(idc.services(type=stype)), None
        ) or idc.create_service(
            name=name,
            type=stype,
            description="Cinder (localstack)",
            is_enabled=True,
        )
        have = {e.interface for e in idc.endpoints(service_id=service.id)}
        for interface in ("public", "internal", "admin"):
            if interface not in have:
                idc.create_endpoint(
                    service_id=service.id,
                    interface=interface,
                    url=lsconf.CINDER_URL,
                    region_id=lsconf.REGION,
                )

    clouds = {
        name: cloud_config(user, project, pw[user])
        for name, (user, project) in lsconf.CLOUDS.items()
    }
    write_private(
        lsconf.CLOUDS_YAML, yaml.safe_dump({"clouds": clouds}, sort_keys=False)
    )

    # every cloud must be able to get a token scoped as configured
    for name in lsconf.CLOUDS:
        connect(clouds[name]).authorize()

    ids = {
        "projects": {name: p.id for name, p in projects.items()},
        "users": {name: u.id for name, u in users.items()},
    }
    with open(lsconf.IDS_JSON, "w", encoding="utf-8") as f:
        json.dump(ids, f, indent=2)
    print(json.dumps(ids, indent=2))


if __name__ == "__main__":
    main()
