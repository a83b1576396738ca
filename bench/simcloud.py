"""A simulated Keystone + Cinder at the HTTP boundary, for benchmarks.

The control plane's cost (CPU, memory, requests) at 10,000+ volumes cannot
be measured on a local stack that holds a dozen. This server answers what
cinderbak asks during discovery, planning, runs, expiry and recovery, the
way Cinder does it (paged listings with ``limit``/``marker`` and ``next``
links, ``all_tenants``, the literal ``metadata`` filter, ``sort`` by
timestamps (``updated_at`` moves with every status change), status
transitions after a delay, Cinder's refusals to delete a parent backup),
and keeps every resource in memory with indexes so it is not the
bottleneck. It counts requests per endpoint (``GET /_sim/stats``).

It is a fake: there is no data, no real Keystone (any password works, a
token names its project), and only the fields and filters cinderbak uses.

    python bench/simcloud.py --port 19960 --volumes 10000 --projects 500 \
        --history 10

Control endpoints (not part of any OpenStack API):

* ``GET /_sim/stats``: requests by endpoint, resources by status;
* ``POST /_sim/reset-stats``;
* ``POST /_sim/age?days=N``: move every timestamp N days into the past
  (simulated days for expiry);
* ``POST /_sim/daily-backups?policy=P&owner=O``: one new backup of ours
  per volume of policy P, as a run would have made it (expiry benches);
* ``GET /_sim/ours?deployment_id=D``: every backup marked as D's, as
  [volume id, project, backup id] (so a bench can record them in the
  journal as the runs that make them would).
"""

from __future__ import annotations

import argparse
import ast
import bisect
import collections
import dataclasses
import datetime
import heapq
import http.server
import itertools
import json
import random
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

MAX_MICROVERSION = "3.70"
IDENTITY_TYPE = "application/vnd.openstack.identity-v3+json"
VOLUME_TYPE = "application/vnd.openstack.volume+json;version=3"
UTC = datetime.UTC


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def _iso(value: datetime.datetime) -> str:
    """Cinder's timestamp format: naive UTC with microseconds."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat()


class Index:
    """Items in creation order, seekable by a marker: one list per key.

    Deleting marks an item gone; the list is compacted when half of it is
    gone, so seeking stays a bisection.
    """

    def __init__(self) -> None:
        self.lists: dict[Any, list[dict[str, Any]]] = {}
        self.garbage: collections.Counter[Any] = collections.Counter()

    def add(self, key: Any, item: dict[str, Any]) -> None:
        self.lists.setdefault(key, []).append(item)

    def drop(self, key: Any) -> None:
        self.garbage[key] += 1
        items = self.lists.get(key, [])
        if self.garbage[key] * 2 > len(items):
            self.lists[key] = [i for i in items if not i["_gone"]]
            self.garbage[key] = 0

    def after(self, key: Any, seq: int) -> Iterator[dict[str, Any]]:
        items = self.lists.get(key, [])
        start = bisect.bisect_right(items, seq, key=lambda i: i["_seq"])
        return (
            i for i in itertools.islice(items, start, None) if not i["_gone"]
        )


class Kind:
    """One resource kind (volumes, backups, snapshots) with its indexes."""

    FILTERS = ("project", "name", "volume")

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_id: dict[str, dict[str, Any]] = {}
        self.indexes = {f: Index() for f in (*self.FILTERS, "all")}

    def keys(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "all": None,
            "project": item["_project"],
            "name": item.get("name"),
            "volume": item.get("volume_id"),
        }

    def add(self, item: dict[str, Any], seq: int) -> None:
        item["_seq"] = seq
        item["_gone"] = False
        self.by_id[item["id"]] = item
        for field, key in self.keys(item).items():
            self.indexes[field].add(key, item)

    def remove(self, item_id: str) -> None:
        item = self.by_id.pop(item_id, None)
        if item is None:
            return
        item["_gone"] = True
        for field, key in self.keys(item).items():
            self.indexes[field].drop(key)


class State:
    """Every resource, under one lock, and the pending transitions."""

    def __init__(
        self, delays: dict[str, float], services: int, max_limit: int = 1000
    ) -> None:
        self.max_limit = max_limit
        """Cinder's ``osapi_max_limit``: no page is longer, whatever
        ``limit`` asks."""
        self.lock = threading.Lock()
        self.seq = itertools.count(1)
        self.kinds = {k: Kind(k) for k in ("volumes", "backups", "snapshots")}
        self.delays = delays
        self.services = services
        self.pending: list[tuple[float, int, Callable[[], None]]] = []
        self.wake = threading.Condition(self.lock)
        self.requests: collections.Counter[str] = collections.Counter()
        self.children: collections.Counter[str] = collections.Counter()
        self.created: collections.Counter[str] = collections.Counter()
        self.first_create: dict[str, float] = {}

    # -- transitions -----------------------------------------------------

    def later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` under the lock after ``delay`` seconds."""
        heapq.heappush(
            self.pending, (time.monotonic() + delay, next(self.seq), action)
        )
        self.wake.notify()

    def ticker(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                while self.pending and self.pending[0][0] <= now:
                    heapq.heappop(self.pending)[2]()
                timeout = self.pending[0][0] - now if self.pending else None
                self.wake.wait(timeout)

    # -- seeding ---------------------------------------------------------

    def seed(self, args: argparse.Namespace) -> None:
        rng = random.Random(args.seed)
        now = _now()
        self.service_project = "service"
        for n in range(args.volumes):
            project = f"project-{n % args.projects:05d}"
            attached = rng.random() < args.attached
            server = f"server-{project}-{(n // args.projects) // 2}"
            metadata = {"cinderbak:policy": args.policy}
            volume = self.new_volume(
                project, f"vol-{n}", metadata, attached, server
            )
            owner = project if args.ownership == "project" else "service"
            for h in range(args.history):
                age = datetime.timedelta(days=args.history - h)
                self.new_backup(
                    volume,
                    owner,
                    name=f"cinderbak-{args.policy}@seed-{h}",
                    metadata={
                        "cinderbak:owner": args.deployment_id,
                        "cinderbak:policy": args.policy,
                        "cinderbak:run": f"{args.policy}@seed-{h}",
                        "cinderbak:consistency": "crash",
                    },
                    incremental=h % args.full_every != 0,
                    when=now - age,
                    status="available",
                )

    def new_volume(
        self,
        project: str,
        name: str,
        metadata: dict[str, str],
        attached: bool,
        server: str,
    ) -> dict[str, Any]:
        volume_id = str(uuid.uuid4())
        created = _iso(_now())
        volume = {
            "id": volume_id,
            "name": name,
            "description": None,
            "status": "in-use" if attached else "available",
            "size": 10,
            "availability_zone": "nova",
            "bootable": "false",
            "encrypted": False,
            "multiattach": False,
            "volume_type": "ceph",
            "snapshot_id": None,
            "source_volid": None,
            "created_at": created,
            "updated_at": created,
            "user_id": "user-" + project,
            "os-vol-tenant-attr:tenant_id": project,
            "os-vol-host-attr:host": "cinder@ceph#ceph",
            "os-vol-mig-status-attr:migstat": None,
            "os-vol-mig-status-attr:name_id": None,
            "replication_status": None,
            "consistencygroup_id": None,
            "group_id": None,
            "provider_id": None,
            "service_uuid": str(uuid.uuid4()),
            "shared_targets": True,
            "cluster_name": None,
            "volume_type_id": "00000000-0000-0000-0000-00000000ceph",
            "metadata": metadata,
            "volume_image_metadata": {},
            "links": [],
            "attachments": (
                [
                    {
                        "id": volume_id,
                        "attachment_id": str(uuid.uuid4()),
                        "volume_id": volume_id,
                        "server_id": server,
                        "host_name": "compute-1",
                        "device": "/dev/vdb",
                        "attached_at": created,
                    }
                ]
                if attached
                else []
            ),
            "_project": project,
        }
        self.kinds["volumes"].add(volume, next(self.seq))
        return volume

    def new_backup(
        self,
        volume: dict[str, Any],
        owner: str,
        *,
        name: str | None,
        metadata: dict[str, str],
        incremental: bool,
        when: datetime.datetime,
        status: str,
        snapshot_id: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        parent = None
        if incremental:
            parent = self.newest_backup(volume["id"], owner)
            if parent is None:
                incremental = False
        backup = {
            "id": str(uuid.uuid4()),
            "name": name,
            "description": description,
            "status": status,
            "volume_id": volume["id"],
            "snapshot_id": snapshot_id,
            "size": volume["size"],
            "object_count": 0,
            "availability_zone": "nova",
            "container": "backups",
            "created_at": _iso(when),
            "updated_at": _iso(when),
            "data_timestamp": _iso(when),
            "is_incremental": incremental,
            "has_dependent_backups": False,
            "fail_reason": None,
            "metadata": metadata,
            "user_id": "cinderbak",
            "encryption_key_id": None,
            "os-backup-project-attr:project_id": owner,
            "links": [],
            "_project": owner,
            "_parent": parent["id"] if parent else None,
        }
        if parent is not None:
            self.children[parent["id"]] += 1
            parent["has_dependent_backups"] = True
        self.kinds["backups"].add(backup, next(self.seq))
        return backup

    def newest_backup(
        self, volume_id: str, owner: str
    ) -> dict[str, Any] | None:
        best = None
        for item in (
            self.kinds["backups"].indexes["volume"].after(volume_id, 0)
        ):
            if item["_project"] == owner and item["status"] == "available":
                if best is None or item["created_at"] >= best["created_at"]:
                    best = item
        return best

    def forget_backup(self, backup: dict[str, Any]) -> None:
        parent_id = backup["_parent"]
        self.kinds["backups"].remove(backup["id"])
        self.children.pop(backup["id"], None)
        if parent_id:
            self.children[parent_id] -= 1
            parent = self.kinds["backups"].by_id.get(parent_id)
            if parent is not None and self.children[parent_id] <= 0:
                parent["has_dependent_backups"] = False


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f-]{27}$|^project-\d+$|^service$")


def endpoint_name(method: str, path: str) -> str:
    """``GET /volume/v3/<project>/backups/<id>`` -> ``GET backups/{id}``."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["volume", "v3"]:
        parts = (
            parts[3:] if len(parts) > 2 and _ID.match(parts[2]) else parts[2:]
        )
    parts = ["{id}" if _ID.match(p) else p for p in parts]
    return f"{method} /" + "/".join(parts)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State
    base: str

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    # -- plumbing ----------------------------------------------------------

    def _reply(
        self,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        parsed: dict[str, Any] = json.loads(self.rfile.read(length))
        return parsed

    def _project(self) -> str:
        token = self.headers.get("X-Auth-Token") or ""
        return token.split(":", 1)[1] if ":" in token else "service"

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = self._body() if method in ("POST", "PUT") else {}
        name = endpoint_name(method, url.path)
        with self.state.lock:
            self.state.requests[name] += 1
        try:
            status, answer, headers = self.route(method, url.path, query, body)
        except Refused as exc:
            status, answer, headers = (
                exc.status,
                {"badRequest": {"message": str(exc), "code": exc.status}},
                {},
            )
        self._reply(status, answer, headers)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # -- routing -----------------------------------------------------------

    def route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: dict[str, Any],
    ) -> tuple[int, Any, dict[str, str]]:
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == "_sim":
            return self.control(parts[1:], query)
        if parts[:1] == ["identity"]:
            return self.identity(method, parts[1:], body)
        if parts[:1] == ["volume"]:
            if len(parts) <= 2:
                return 200, self.versions(), {}
            rest = (
                parts[3:]
                if len(parts) > 2 and _ID.match(parts[2])
                else parts[2:]
            )
            if not rest:
                return 200, self.versions(), {}
            with self.state.lock:
                return self.cinder(method, rest, query, body)
        raise Refused(404, f"no route for {path}")

    def versions(self) -> dict[str, Any]:
        return {
            "versions": [
                {
                    "id": "v3.0",
                    "status": "CURRENT",
                    "version": MAX_MICROVERSION,
                    "min_version": "3.0",
                    "updated": "2023-01-01T00:00:00Z",
                    "links": [
                        {"rel": "self", "href": f"{self.base}/volume/v3/"}
                    ],
                    "media-types": [
                        {
                            "base": "application/json",
                            "type": VOLUME_TYPE,
                        }
                    ],
                }
            ]
        }

    def identity(
        self, method: str, parts: list[str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and parts in ([], ["v3"]):
            return (
                200,
                {
                    "version": {
                        "id": "v3.14",
                        "status": "stable",
                        "updated": "2020-04-07T00:00:00Z",
                        "links": [
                            {
                                "rel": "self",
                                "href": f"{self.base}/identity/v3/",
                            }
                        ],
                        "media-types": [
                            {
                                "base": "application/json",
                                "type": IDENTITY_TYPE,
                            }
                        ],
                    }
                },
                {},
            )
        if parts == ["v3", "auth", "tokens"] and method in ("POST", "GET"):
            if method == "POST":
                scope = (
                    body.get("auth", {}).get("scope", {}).get("project", {})
                )
                project = scope.get("id") or "service"
            else:
                project = (
                    self.headers.get("X-Subject-Token") or ":service"
                ).split(":", 1)[1]
            return (
                201 if method == "POST" else 200,
                self.token(project),
                {"X-Subject-Token": f"tok:{project}"},
            )
        raise Refused(404, "no such identity route")

    def token(self, project: str) -> dict[str, Any]:
        expires = _now() + datetime.timedelta(hours=12)
        domain = {"id": "default", "name": "Default"}
        url = f"{self.base}/volume/v3/{project}"
        return {
            "token": {
                "methods": ["password"],
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "issued_at": _now().strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "user": {
                    "id": "cinderbak",
                    "name": "cinderbak",
                    "domain": domain,
                },
                "project": {"id": project, "name": project, "domain": domain},
                "roles": [{"id": "admin", "name": "admin"}],
                "catalog": [
                    {
                        "id": f"cinder-{kind}",
                        "type": kind,
                        "name": "cinder",
                        "endpoints": [
                            {
                                "id": f"{kind}-{iface}",
                                "interface": iface,
                                "region": "RegionOne",
                                "region_id": "RegionOne",
                                "url": url,
                            }
                            for iface in ("public", "internal", "admin")
                        ],
                    }
                    for kind in ("block-storage", "volumev3")
                ],
            }
        }

    def control(
        self, parts: list[str], query: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        state = self.state
        with state.lock:
            if parts == ["stats"]:
                by_status: dict[str, collections.Counter[str]] = {}
                for kind, store in state.kinds.items():
                    by_status[kind] = collections.Counter(
                        i["status"] for i in store.by_id.values()
                    )
                return (
                    200,
                    {
                        "requests": dict(state.requests),
                        "resources": {
                            k: dict(v) for k, v in by_status.items()
                        },
                        "created": dict(state.created),
                        "first_create": state.first_create,
                        "now": time.time(),
                    },
                    {},
                )
            if parts == ["reset-stats"]:
                state.requests.clear()
                state.created.clear()
                state.first_create.clear()
                return 200, {}, {}
            if parts == ["age"]:
                shift = datetime.timedelta(days=float(query.get("days", 1)))
                for store in state.kinds.values():
                    for item in store.by_id.values():
                        for field in (
                            "created_at",
                            "data_timestamp",
                            "updated_at",
                        ):
                            if item.get(field):
                                when = datetime.datetime.fromisoformat(
                                    item[field]
                                )
                                item[field] = (when - shift).isoformat()
                return 200, {}, {}
            if parts == ["ours"]:
                marked = query["deployment_id"]
                return (
                    200,
                    {
                        "backups": [
                            [b["volume_id"], b["_project"], b["id"]]
                            for b in state.kinds["backups"].by_id.values()
                            if b["metadata"].get("cinderbak:owner") == marked
                        ]
                    },
                    {},
                )
            if parts == ["daily-backups"]:
                policy = query["policy"]
                made = 0
                for volume in list(state.kinds["volumes"].by_id.values()):
                    if volume["metadata"].get("cinderbak:policy") != policy:
                        continue
                    owner = query.get("owner") or volume["_project"]
                    state.new_backup(
                        volume,
                        owner,
                        name=f"cinderbak-{policy}@{_iso(_now())}",
                        metadata={
                            "cinderbak:owner": query["deployment_id"],
                            "cinderbak:policy": policy,
                        },
                        incremental=query.get("incremental", "1") == "1",
                        when=_now(),
                        status="available",
                    )
                    made += 1
                return 200, {"created": made}, {}
        raise Refused(404, "no such control route")

    # -- Cinder --------------------------------------------------------------

    def cinder(
        self,
        method: str,
        rest: list[str],
        query: dict[str, str],
        body: dict[str, Any],
    ) -> tuple[int, Any, dict[str, str]]:
        head = rest[0]
        if head == "os-services" and method == "GET":
            return 200, {"services": self.services(query)}, {}
        if head == "os-quota-sets" and method == "GET":
            return 200, self.quota(rest[1]), {}
        if head not in self.state.kinds:
            raise Refused(404, f"no resource {head}")
        kind = self.state.kinds[head]
        if len(rest) == 1 or rest[1] == "detail":
            if method == "GET":
                return 200, self.listing(kind, query, detail=len(rest) > 1), {}
            if method == "POST" and len(rest) == 1:
                return 202, self.create(kind, body), {}
        item = kind.by_id.get(rest[1])
        if item is None or not self.visible(item, query, any_project=True):
            raise Refused(404, f"{head[:-1]} {rest[1]} could not be found")
        single = head[:-1]
        if len(rest) == 2:
            if method == "GET":
                return 200, {single: self.public(item)}, {}
            if method == "DELETE":
                self.delete(kind, item)
                return 202, None, {}
            if method == "PUT":
                update = body.get(single, {})
                if "metadata" in update:
                    item["metadata"] = dict(update["metadata"])
                return 200, {single: self.public(item)}, {}
        if len(rest) == 3 and rest[2] == "metadata":
            if method == "POST":
                item["metadata"].update(body.get("metadata", {}))
            return 200, {"metadata": dict(item["metadata"])}, {}
        raise Refused(404, "no such Cinder route")

    def visible(
        self,
        item: dict[str, Any],
        query: dict[str, str],
        any_project: bool = False,
    ) -> bool:
        project = self._project()
        return (
            any_project or project == "service" or item["_project"] == project
        )

    @staticmethod
    def public(item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def services(self, query: dict[str, str]) -> list[dict[str, Any]]:
        return [
            {
                "binary": "cinder-backup",
                "host": f"backup-{n}",
                "zone": "nova",
                "status": "enabled",
                "state": "up",
                "updated_at": _iso(_now()),
                "disabled_reason": None,
            }
            for n in range(self.state.services)
        ]

    def quota(self, project: str) -> dict[str, Any]:
        backups = [
            b
            for b in self.state.kinds["backups"]
            .indexes["project"]
            .after(project, 0)
        ]
        used_gb = sum(b["size"] for b in backups)
        return {
            "quota_set": {
                "id": project,
                "backups": {
                    "limit": -1,
                    "in_use": len(backups),
                    "reserved": 0,
                },
                "backup_gigabytes": {
                    "limit": -1,
                    "in_use": used_gb,
                    "reserved": 0,
                },
                "volumes": {"limit": -1, "in_use": 0, "reserved": 0},
                "gigabytes": {"limit": -1, "in_use": 0, "reserved": 0},
                "snapshots": {"limit": -1, "in_use": 0, "reserved": 0},
            }
        }

    def listing(
        self, kind: Kind, query: dict[str, str], *, detail: bool
    ) -> dict[str, Any]:
        limit = self._limit(query)
        everyone = query.get("all_tenants") in ("1", "True", "true")
        project = self._project()
        filters: list[Callable[[dict[str, Any]], bool]] = []
        if query.get("name") is not None:
            index, key = "name", query["name"]
        elif query.get("volume_id"):
            index, key = "volume", query["volume_id"]
        elif everyone and query.get("project_id"):
            # An admin's column filter (Cinder lets admins filter on any
            # column of the model; see api/common.reject_invalid_filters).
            index, key = "project", query["project_id"]
        elif not everyone:
            index, key = "project", project
        else:
            index, key = "all", None
        if not everyone:
            filters.append(lambda i: i["_project"] == project)
        elif query.get("project_id"):
            filters.append(lambda i: i["_project"] == query["project_id"])
        if query.get("volume_id"):
            filters.append(lambda i: i.get("volume_id") == query["volume_id"])
        if query.get("status"):
            filters.append(lambda i: i["status"] == query["status"])
        if query.get("metadata"):
            wanted = ast.literal_eval(query["metadata"])
            filters.append(
                lambda i: all(
                    i["metadata"].get(k) == v for k, v in wanted.items()
                )
            )
        order = sort_keys(query)
        if order is not None:
            page = self.sorted_page(
                kind, index, key, filters, order, query, limit
            )
        else:
            seq = 0
            if query.get("marker"):
                marker = kind.by_id.get(query["marker"])
                if marker is None:
                    raise Refused(404, f"marker {query['marker']} not found")
                seq = marker["_seq"]
            page = list(
                itertools.islice(
                    (
                        i
                        for i in kind.indexes[index].after(key, seq)
                        if all(f(i) for f in filters)
                    ),
                    limit,
                )
            )
        answer: dict[str, Any] = {
            kind.name: [
                self.public(i)
                if detail
                else {"id": i["id"], "name": i.get("name"), "links": []}
                for i in page
            ]
        }
        if len(page) == limit:
            nxt = dict(query, marker=page[-1]["id"], limit=str(limit))
            answer[f"{kind.name}_links"] = [
                {
                    "rel": "next",
                    "href": f"{self.base}/volume/v3/{project}/{kind.name}"
                    + ("/detail" if detail else "")
                    + "?"
                    + urllib.parse.urlencode(nxt),
                }
            ]
        return answer

    @staticmethod
    def sorted_page(
        kind: Kind,
        index: str,
        key: Any,
        filters: list[Callable[[dict[str, Any]], bool]],
        order: tuple[list[str], bool],
        query: dict[str, str],
        limit: int,
    ) -> list[dict[str, Any]]:
        """One page in an explicit sort order (``sort=updated_at:desc``),
        as Cinder pages a sorted query: the items after the marker's own
        values of the sort keys (the marker looked up by id, 404 when it
        is gone). One pass over the matching items per page, not a sort
        of them all."""
        keys, descending = order

        def values(item: dict[str, Any]) -> list[Any]:
            return [item.get(k) or "" for k in keys]

        matching: Iterator[dict[str, Any]] = (
            i
            for i in kind.indexes[index].after(key, 0)
            if all(f(i) for f in filters)
        )
        if query.get("marker"):
            marker = kind.by_id.get(query["marker"])
            if marker is None:
                raise Refused(404, f"marker {query['marker']} not found")
            after = values(marker)
            matching = (
                i
                for i in matching
                if (values(i) < after if descending else values(i) > after)
            )
        pick = heapq.nlargest if descending else heapq.nsmallest
        return pick(limit, matching, key=values)

    def _limit(self, query: dict[str, str]) -> int:
        """The page length Cinder serves: ``limit`` capped at
        ``osapi_max_limit``, which is also the default."""
        cap = self.state.max_limit
        return min(int(query.get("limit") or cap), cap)

    def create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        single = kind.name[:-1]
        spec = body.get(single) or {}
        volume = state.kinds["volumes"].by_id.get(spec.get("volume_id", ""))
        if volume is None:
            raise Refused(404, f"volume {spec.get('volume_id')} not found")
        if volume["status"] not in ("available", "in-use"):
            raise Refused(
                400, f"Invalid volume: volume status is {volume['status']}"
            )
        if volume["status"] == "in-use" and not spec.get("force"):
            if not spec.get("snapshot_id"):
                raise Refused(
                    400, "Invalid volume: volume is in-use, use force"
                )
        project = self._project()
        delay = state.delays[kind.name]
        state.created[kind.name] += 1
        state.first_create.setdefault(kind.name, time.time())
        if kind.name == "backups":
            item = state.new_backup(
                volume,
                project,
                name=spec.get("name"),
                metadata=dict(spec.get("metadata") or {}),
                incremental=bool(spec.get("incremental")),
                when=_now(),
                status="creating",
                snapshot_id=spec.get("snapshot_id"),
                description=spec.get("description"),
            )
            previous = volume["status"]
            volume["status"] = "backing-up"

            def ready() -> None:
                item["status"] = "available"
                item["updated_at"] = _iso(_now())
                if volume["status"] == "backing-up":
                    volume["status"] = previous

            state.later(delay, ready)
        else:
            now = _iso(_now())
            item = {
                "id": str(uuid.uuid4()),
                "name": spec.get("name"),
                "description": spec.get("description"),
                "status": "creating",
                "volume_id": volume["id"],
                "size": volume["size"],
                "created_at": now,
                "updated_at": now,
                "metadata": dict(spec.get("metadata") or {}),
                "progress": "0%",
                "os-extended-snapshot-attributes:project_id": project,
                "os-extended-snapshot-attributes:progress": "0%",
                "_project": project,
            }
            kind.add(item, next(state.seq))

            def snap_ready() -> None:
                item["status"] = "available"
                item["updated_at"] = _iso(_now())
                item["progress"] = "100%"

            state.later(delay, snap_ready)
        return {single: self.public(item)}

    def delete(self, kind: Kind, item: dict[str, Any]) -> None:
        state = self.state
        if item["status"] not in ("available", "error"):
            raise Refused(
                400, f"status must be available or error, not {item['status']}"
            )
        if kind.name == "backups" and state.children[item["id"]] > 0:
            raise Refused(400, "Incremental backups exist for this backup.")
        item["status"] = "deleting"
        item["updated_at"] = _iso(_now())

        def gone() -> None:
            if kind.name == "backups":
                state.forget_backup(item)
            else:
                kind.remove(item["id"])

        state.later(state.delays["delete"], gone)


SORT_KEYS = ("created_at", "updated_at", "id", "volume_id")


def sort_keys(query: dict[str, str]) -> tuple[list[str], bool] | None:
    """The sort order asked for, as Cinder reads it, or None for the
    default order.

    Cinder (``cinder.api.common.get_sort_params``) takes ``sort=key:dir,...``
    or ``sort_key``/``sort_dir``; its database layer then appends
    ``created_at`` and ``id`` as tie-breakers in the first key's direction
    (``process_sort_params``). Only timestamps and ids are simulated, in
    one direction, which is all cinderbak asks for; anything else is
    refused rather than answered in a made-up order.
    """
    if query.get("sort"):
        pairs = [part.partition(":") for part in query["sort"].split(",")]
        keys = [k.strip() for k, _, _ in pairs]
        dirs = {(d.strip() or "desc") for _, _, d in pairs}
    elif query.get("sort_key"):
        keys = [query["sort_key"]]
        dirs = {query.get("sort_dir") or "desc"}
    else:
        return None
    if len(dirs) != 1 or not dirs <= {"asc", "desc"}:
        raise Refused(400, f"sort directions {sorted(dirs)}: not simulated")
    if not set(keys) <= set(SORT_KEYS):
        raise Refused(400, f"sort keys {keys}: not simulated")
    keys += [k for k in ("created_at", "id") if k not in keys]
    return keys, dirs == {"desc"}


@dataclasses.dataclass
class Sim:
    """A running simulator (for benches that start it in-process)."""

    server: http.server.ThreadingHTTPServer
    state: State
    url: str

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=19960)
    p.add_argument("--volumes", type=int, default=1000)
    p.add_argument("--projects", type=int, default=50)
    p.add_argument("--history", type=int, default=10)
    p.add_argument("--full-every", type=int, default=7)
    p.add_argument("--attached", type=float, default=0.5)
    p.add_argument("--policy", default="bench")
    p.add_argument(
        "--ownership", choices=("project", "service"), default="project"
    )
    p.add_argument("--deployment-id", default="bench")
    p.add_argument("--backup-seconds", type=float, default=1.0)
    p.add_argument("--snapshot-seconds", type=float, default=0.2)
    p.add_argument("--delete-seconds", type=float, default=0.2)
    p.add_argument("--services", type=int, default=20)
    p.add_argument(
        "--max-limit",
        type=int,
        default=1000,
        help="Cinder's osapi_max_limit: the longest page served",
    )
    p.add_argument("--seed", type=int, default=1)
    return p


def start(args: argparse.Namespace) -> Sim:
    """Seed a simulator and serve it from a background thread."""
    state = State(
        {
            "backups": args.backup_seconds,
            "snapshots": args.snapshot_seconds,
            "volumes": 0.0,
            "delete": args.delete_seconds,
        },
        args.services,
        args.max_limit,
    )
    state.seed(args)
    url = f"http://127.0.0.1:{args.port}"

    class Bound(Handler):
        pass

    Bound.state = state
    Bound.base = url
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Bound)
    server.daemon_threads = True
    server.request_queue_size = 128
    threading.Thread(target=state.ticker, daemon=True).start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Sim(server, state, url)


def main() -> None:
    args = parser().parse_args()
    sim = start(args)
    print(f"simcloud: {sim.url}/identity/v3 serving", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
