"""An nbdkit plugin serving one RBD image (at a snapshot), read-only.

Why not QEMU's own RBD driver: it always opens an image read-write
(``rbd_open``), which registers a watch on the image header, a write
operation that a read-only cephx user (``profile rbd-read-only``) is
refused. librbd's read-only open needs no watch, so ``cinderbak files``
serves the backup to the libguestfs appliance over NBD, through a unix
socket in a private directory, from this plugin opening it read-only.

It runs inside nbdkit's embedded Python (the system's 3.11, with Debian's
python3-rados/python3-rbd), not in cinderbak's venv: it imports nothing
from cinderbak. Parameters (paths and names only; the key stays in the
keyring file): ``conf``, ``id``, ``keyring``, ``pool``, ``image``,
``snap`` (optional).
"""

from __future__ import annotations

from typing import Any

import nbdkit  # provided by nbdkit, which runs this file

API_VERSION = 2

_params: dict[str, str] = {}
_state: dict[str, Any] = {}


def thread_model() -> int:
    # One librbd image handle, used from one request at a time.
    return int(nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS)


def config(key: str, value: str) -> None:
    if key not in ("conf", "id", "keyring", "pool", "image", "snap"):
        raise RuntimeError(f"unknown parameter {key}")
    _params[key] = value


def config_complete() -> None:
    missing = {"conf", "id", "pool", "image"} - set(_params)
    if missing:
        raise RuntimeError(f"missing parameters: {', '.join(sorted(missing))}")


def get_ready() -> None:
    """Connect once, before serving, so a bad key fails nbdkit's start."""
    import rados
    import rbd

    settings = {"client_mount_timeout": "10"}
    if _params.get("keyring"):
        settings["keyring"] = _params["keyring"]
    cluster = rados.Rados(
        conffile=_params["conf"], rados_id=_params["id"], conf=settings
    )
    cluster.connect()
    ioctx = cluster.open_ioctx(_params["pool"])
    image = rbd.Image(
        ioctx,
        _params["image"],
        snapshot=_params.get("snap") or None,
        read_only=True,
    )
    _state.update(cluster=cluster, ioctx=ioctx, image=image)


def cleanup() -> None:
    for key in ("image", "ioctx"):
        if key in _state:
            _state.pop(key).close()
    if "cluster" in _state:
        _state.pop("cluster").shutdown()


def open(readonly: bool) -> int:  # noqa: A001 - nbdkit's callback name
    return 1


def get_size(handle: int) -> int:
    return int(_state["image"].size())


def can_write(handle: int) -> bool:
    return False


def can_multi_conn(handle: int) -> bool:
    return True


def pread(handle: int, buf: bytearray, offset: int, flags: int) -> None:
    data = _state["image"].read(offset, len(buf))
    buf[: len(data)] = data
    if len(data) < len(buf):  # past a short read: zeros, as a hole
        buf[len(data) :] = bytes(len(buf) - len(data))
