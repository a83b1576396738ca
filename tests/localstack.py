"""Helpers for tests that run against the local stack (tools/localstack).

`ensure_up()` starts the stack (or checks that it runs) and returns its
description; the Ceph helpers read and write RBD images directly with the
python `rados`/`rbd` bindings (Debian's python3-rados/python3-rbd; link
them into a venv with `tools/localstack.d/link-ceph-bindings VENV_PYTHON`).
Pure Python: only the standard library, plus rados/rbd where used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCALSTACK = REPO / "tools" / "localstack"
CHUNK = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class CephUser:
    user: str  # rados id, e.g. "cinderbak-ro"
    client: str  # entity name, e.g. "client.cinderbak-ro"
    keyring: str


@dataclasses.dataclass(frozen=True)
class CephCluster:
    name: str  # "a" (volumes) or "b" (backups)
    conf: str
    pool: str
    admin: CephUser
    users: dict[str, CephUser]


@dataclasses.dataclass(frozen=True)
class Stack:
    """What stack.json says about the running stack."""

    raw: dict[str, Any]
    path: str

    @property
    def state_dir(self) -> str:
        return self.raw["state_dir"]

    @property
    def clouds_yaml(self) -> str:
        return self.raw["clouds_yaml"]

    @property
    def keystone_url(self) -> str:
        return self.raw["keystone_url"]

    @property
    def cinder_url(self) -> str:
        return self.raw["cinder_url"]

    @property
    def projects(self) -> dict[str, str]:
        """Project ids by name: admin, service, tenant-a/b/c."""
        return self.raw["projects"]

    project_ids = projects

    def cloud(self, who: str) -> str:
        """Cloud name in clouds.yaml for admin, cinderbak, tenant-a/b/c."""
        return self.raw["clouds"][who]

    def ceph(self, name: str) -> CephCluster:
        """Cluster "a" (volumes) or "b" (backups)."""
        c = self.raw["ceph"][name]
        return CephCluster(
            name=name,
            conf=c["conf"],
            pool=c["pool"],
            admin=CephUser(**c["admin"]),
            users={k: CephUser(**v) for k, v in c["users"].items()},
        )

    @property
    def readonly_user(self) -> CephUser:
        """The read-only cephx user on cluster A (client.cinderbak-ro)."""
        return self.ceph("a").users["readonly"]

    @property
    def backup_readonly_user(self) -> CephUser:
        """The read-only cephx user on cluster B (client.cinderbak-backup-ro,
        ``profile rbd-read-only pool=backups``)."""
        return self.ceph("b").users["readonly"]

    def password(self, user: str) -> str:
        """Password of a Keystone user (from the stack's secrets file)."""
        key = "LS_PW_" + user.upper()
        for line in (
            pathlib.Path(self.raw["secrets_file"]).read_text().splitlines()
        ):
            k, _, v = line.partition("=")
            if k == key:
                return v
        raise KeyError(user)


def stack_json_path() -> str:
    return os.environ.get("LOCALSTACK_JSON") or str(
        REPO / ".localstack" / "stack.json"
    )


def load_stack() -> Stack:
    """Return the description of the stack from stack.json (LOCALSTACK_JSON
    or <repo>/.localstack/stack.json). Raise FileNotFoundError if absent."""
    path = stack_json_path()
    with open(path, encoding="utf-8") as f:
        return Stack(raw=json.load(f), path=path)


def ensure_up() -> Stack:
    """Run `tools/localstack up` (output to the terminal), then load_stack().
    Raise CalledProcessError if the stack cannot be brought up."""
    subprocess.run(
        [str(LOCALSTACK), "up"], check=True, stdin=subprocess.DEVNULL
    )
    return load_stack()


# --- Ceph ---------------------------------------------------------------


@contextlib.contextmanager
def ioctx(
    stack: Stack,
    cluster: str,
    pool: str | None = None,
    user: CephUser | None = None,
) -> Iterator[Any]:
    """Yield a rados I/O context on cluster "a" or "b" (admin by default)."""
    import rados

    c = stack.ceph(cluster)
    u = user or c.admin
    with rados.Rados(
        conffile=c.conf, rados_id=u.user, conf={"keyring": u.keyring}
    ) as r:
        with r.open_ioctx(pool or c.pool) as io:
            yield io


def _split(spec: str) -> tuple[str, str, str | None]:
    """'pool/image[@snap]' or a volume id -> (pool, image, snap)."""
    if "/" not in spec:
        return "volumes", f"volume-{spec}", None
    pool, _, rest = spec.partition("/")
    image, _, snap = rest.partition("@")
    return pool, image, snap or None


def _cluster_of(stack: Stack, pool: str) -> str:
    for name in ("a", "b"):
        if stack.ceph(name).pool == pool:
            return name
    if pool in ("dr-volumes", "cinderbak-dr"):  # the DR region's, on B
        return "b"
    raise ValueError(f"no cluster holds pool {pool}")


def write_volume(
    stack: Stack, volume_id: str, offset: int, data: bytes
) -> None:
    """Write data at offset into a Cinder volume's RBD image (cluster A)."""
    import rbd

    with ioctx(stack, "a") as io, rbd.Image(io, f"volume-{volume_id}") as img:
        written = img.write(data, offset)
        if written != len(data):
            raise OSError(f"short write: {written} of {len(data)} bytes")
        img.flush()


def read_volume_md5(stack: Stack, spec: str, size: int | None = None) -> str:
    """Return the md5 hex digest of the first size bytes (default: all) of an
    image. spec is a volume id (volumes/volume-<id> on A) or
    'pool/image[@snap]'; the cluster follows from the pool."""
    import rbd

    pool, image, snap = _split(spec)
    md5 = hashlib.md5()
    with (
        ioctx(stack, _cluster_of(stack, pool), pool) as io,
        rbd.Image(io, image, snapshot=snap, read_only=True) as img,
    ):
        end = img.size() if size is None else size
        for off in range(0, end, CHUNK):
            md5.update(img.read(off, min(CHUNK, end - off)))
    return md5.hexdigest()


def backup_images(stack: Stack) -> dict[str, list[str]]:
    """Return {image: [snapshot names]} for pool backups on cluster B."""
    import rbd

    out = {}
    with ioctx(stack, "b") as io:
        for name in rbd.RBD().list(io):
            with rbd.Image(io, name, read_only=True) as img:
                out[name] = [s["name"] for s in img.list_snaps()]
    return out


def diff_bytes(
    stack: Stack,
    cluster: str,
    image: str,
    from_snap: str | None,
    to_snap: str | None,
) -> int:
    """Return the bytes of data extents that differ between two snapshots of
    image (to_snap None = the image head; from_snap None = since creation),
    as `rbd diff --from-snap` reports them. Discarded (zero) extents are not
    counted. image may be 'pool/name' or a name in the cluster's pool."""
    import rbd

    pool, _, name = image.rpartition("/")
    total = 0

    def add(_offset: int, length: int, exists: bool) -> None:
        nonlocal total
        if exists:
            total += length

    with (
        ioctx(stack, cluster, pool or None) as io,
        rbd.Image(io, name, snapshot=to_snap, read_only=True) as img,
    ):
        img.diff_iterate(0, img.size(), from_snap, add)
    return total


def backup_snapshot(stack: Stack, backup_id: str) -> tuple[str, str]:
    """Return (image, snapshot) on cluster B holding a Ceph-driver backup
    (snapshots are named backup.<backup id>.snap.<timestamp>).
    Raise LookupError if there is none."""
    prefix = f"backup.{backup_id}.snap."
    for image, snaps in backup_images(stack).items():
        for snap in snaps:
            if snap.startswith(prefix):
                return image, snap
    raise LookupError(f"no snapshot of backup {backup_id} in pool backups")


def backup_diff_bytes(
    stack: Stack, from_backup_id: str, to_backup_id: str
) -> int:
    """Return the changed data bytes on cluster B between the snapshots of
    two backups of one chain (e.g. a full and its incremental)."""
    image, from_snap = backup_snapshot(stack, from_backup_id)
    to_image, to_snap = backup_snapshot(stack, to_backup_id)
    if to_image != image:
        raise ValueError(
            f"backups are in different images: {image}, {to_image}"
        )
    return diff_bytes(stack, "b", image, from_snap, to_snap)


def snapshots_of_volume(stack: Stack, volume_id: str) -> list[str]:
    """Return the RBD snapshot names of a Cinder volume on cluster A
    (Cinder snapshots are snapshot-<id>; the Ceph backup driver's own are
    backup.<backup id>.snap.<timestamp>)."""
    import rbd

    with (
        ioctx(stack, "a") as io,
        rbd.Image(io, f"volume-{volume_id}", read_only=True) as img,
    ):
        return [s["name"] for s in img.list_snaps()]
