"""Write $STATE/stack.json, the machine-readable description of the stack.

Usage: write_stack.py NAME=PIDFILE...   (environment: see lsconf.py, plus
LS_PORTS_JSON, LS_CINDER_VENV, LS_KEYSTONE_VENV). Standard library only.
"""

import json
import os
import sys

import lsconf


def ceph(letter: str, role: str, pool: str, users: dict[str, str]) -> dict:
    d = os.path.join(lsconf.STATE, f"ceph-{letter}")
    fsid = None
    with open(os.path.join(d, "ceph.conf"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("fsid"):
                fsid = line.split("=", 1)[1].strip()

    def user(name: str) -> dict:
        return {
            "user": name,
            "client": f"client.{name}",
            "keyring": os.path.join(d, f"ceph.client.{name}.keyring"),
        }

    return {
        "role": role,
        "dir": d,
        "conf": os.path.join(d, "ceph.conf"),
        "fsid": fsid,
        "pool": pool,
        "admin": user("admin"),
        "users": {key: user(name) for key, name in users.items()},
        "log_dir": os.path.join(d, "log"),
    }


def main(argv: list[str]) -> None:
    with open(lsconf.IDS_JSON, encoding="utf-8") as f:
        ids = json.load(f)
    clouds = {name.removeprefix("localstack-"): name for name in lsconf.CLOUDS}
    users = {}
    for name, user_id in ids["users"].items():
        cloud = next(
            (c for c, (u, _) in lsconf.CLOUDS.items() if u == name), None
        )
        project = lsconf.CLOUDS[cloud][1] if cloud else None
        users[name] = {"id": user_id, "cloud": cloud, "project": project}
    a = ceph(
        "a",
        "volume",
        "volumes",
        {"cinder": "cinder", "readonly": "cinderbak-ro"},
    )
    a["readonly"] = a["users"]["readonly"]
    b = ceph(
        "b",
        "backup",
        "backups",
        {
            "cinder-backup": "cinder-backup",
            "readonly": "cinderbak-backup-ro",
            "dr-catalog": "cinderbak-dr",
            "dr-readonly": "cinderbak-dr-ro",
        },
    )
    b["readonly"] = b["users"]["readonly"]
    ports = json.loads(os.environ["LS_PORTS_JSON"])
    stack = {
        "schema": 1,
        "state_dir": lsconf.STATE,
        "region": lsconf.REGION,
        "keystone_url": lsconf.KEYSTONE_URL,
        "cinder_url": lsconf.CINDER_URL,
        "clouds_yaml": lsconf.CLOUDS_YAML,
        "clouds": clouds,
        "secrets_file": os.path.join(lsconf.STATE, "secrets.env"),
        "projects": ids["projects"],
        "users": users,
        "ceph": {"a": a, "b": b},
        "cinder": {
            "conf": os.path.join(lsconf.STATE, "cinder", "cinder.conf"),
            "venv": os.environ["LS_CINDER_VENV"],
            "host": "localstack",
            "backend": "ceph-a",
            "volume_service": "localstack@ceph-a",
            "volume_type": "__DEFAULT__",
        },
        "keystone": {
            "conf": os.path.join(lsconf.STATE, "keystone", "keystone.conf"),
            "venv": os.environ["LS_KEYSTONE_VENV"],
        },
        "dr": {
            "enabled": os.path.exists(
                os.path.join(lsconf.STATE, "cinder-dr", ".enabled")
            ),
            "region": "RegionDR",
            "cinder_url": os.environ["LS_CINDER_DR_URL"],
            "conf": os.path.join(lsconf.STATE, "cinder-dr", "cinder.conf"),
            "host": "localstack-dr",
            "volume_pool": "dr-volumes",
            "catalog_pool": "cinderbak-dr",
            "database": "cinder_dr",
            "clouds": {
                "admin": "localstack-dr-admin",
                "cinderbak": "localstack-dr-cinderbak",
                "tenant-a": "localstack-dr-tenant-a",
                "tenant-b": "localstack-dr-tenant-b",
            },
        },
        "rabbitmq_url": f"rabbit://guest:guest@127.0.0.1:{ports['rabbitmq']}/",
        "postgres_url": f"postgresql://postgres@127.0.0.1:{ports['postgres']}/cinder",
        "etcd_url": f"http://127.0.0.1:{ports['etcd']}",
        # tooz backend URL for cinderbak's [coordination] backend_url
        "coordination_url": f"etcd3+http://127.0.0.1:{ports['etcd']}",
        "ports": ports,
        "log_dir": os.path.join(lsconf.STATE, "logs"),
        "pid_files": dict(s.split("=", 1) for s in argv),
    }
    path = os.path.join(lsconf.STATE, "stack.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(stack, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(sys.argv[1:])
