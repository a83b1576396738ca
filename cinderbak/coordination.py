"""Membership of several daemons through tooz: who owns what, who leads.

Without ``[coordination] backend_url`` a daemon works alone (``Solo``):
it owns every freeze group and leads. With it, every daemon joins one
tooz group, and a consistent hash ring (tooz's, rebuilt from the membership)
gives each server's freeze group (or detached volume) to exactly one
member. The ring can briefly differ between members while one joins or
leaves; the journal's unique run per (policy, volume, slot) keeps that
from ever becoming a second backup. CLI commands that write the journal
join a second group (``<group>-cli``) without taking a share of the ring,
so their runs are never taken for a dead daemon's.

The decisions (who leads, whose work is due for takeover) are the pure
functions of :mod:`cinderbak.membership`; this module only talks to the
backend.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import membership

LOG = logging.getLogger(__name__)

GROUP = "coordination"

GROUP_DRIVERS = frozenset(
    {
        "etcd3+http",
        "etcd3+https",
        "redis",
        "zookeeper",
        "kazoo",
        "memcached",
        "file",
    }
)
"""tooz drivers (URL schemes) with group membership, which partitioning
and takeover need; tooz's SQL drivers offer locks only."""

HOST_OPT = cfg.StrOpt(
    "host",
    default=socket.gethostname(),
    sample_default="<the machine's host name>",
    help="Name of this daemon: recorded with every run it journals and "
    "used as its member id in the coordination group. Must be unique "
    "among the daemons sharing one journal, and stable across restarts "
    "(a restarted daemon recovers the runs recorded under its name).",
)

OPTS = [
    cfg.StrOpt(
        "backend_url",
        secret=True,
        help="tooz backend URL shared by every cinderbak daemon of the "
        "region, e.g. etcd3+http://etcd.example.org:2379 (tested) or "
        "redis://:PASSWORD@redis.example.org:6379. Unset: this daemon "
        "works alone and owns all work. Set: the daemons divide every "
        "policy run between them, and a survivor thaws the guests and "
        "settles the runs of a daemon that died.",
    ),
    cfg.StrOpt(
        "group",
        default="cinderbak",
        help="Name of the tooz group the daemons join; daemons of "
        "separate regions sharing one backend need separate names.",
    ),
    cfg.IntOpt(
        "lease",
        default=30,
        min=5,
        help="Seconds a member stays in the group after its last "
        "heartbeat. A survivor takes over a dead daemon's frozen guests "
        "and runs within about this long, once the daemon is also silent "
        "in the journal. Passed to drivers that take it from the URL "
        "(etcd3gw: timeout) unless the URL sets it.",
    ),
    cfg.FloatOpt(
        "check_interval",
        default=5.0,
        min=0.5,
        help="Seconds between looks at the group's membership (joins and "
        "leaves, rejoining after the backend was away, takeovers), and "
        "between heartbeats in the journal. At most a third of lease.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opt(HOST_OPT)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [("DEFAULT", [HOST_OPT]), (GROUP, OPTS)]


class Membership(Protocol):
    """What the daemon asks of its group, alone or coordinated."""

    member_id: str
    coordinated: bool

    def start(self) -> None: ...

    def owns(self, key: str) -> bool: ...

    def is_leader(self) -> bool: ...

    def members(self) -> frozenset[str]: ...

    @property
    def beat_group(self) -> str | None: ...

    def check(
        self,
        hosts_with_work: Iterable[str],
        beats: Mapping[str, int] | None = None,
    ) -> list[str]: ...

    def lock(self, name: str) -> contextlib.AbstractContextManager[bool]: ...

    def close(self) -> None: ...


class Solo:
    """One daemon alone: it owns everything and leads."""

    coordinated = False

    def __init__(self, member_id: str) -> None:
        self.member_id = member_id

    def start(self) -> None:
        return None

    def owns(self, key: str) -> bool:
        return True

    def is_leader(self) -> bool:
        return True

    def members(self) -> frozenset[str]:
        return frozenset({self.member_id})

    @property
    def beat_group(self) -> str | None:
        return None  # alone, nobody reads a heartbeat

    def check(
        self,
        hosts_with_work: Iterable[str],
        beats: Mapping[str, int] | None = None,
    ) -> list[str]:
        # Alone, a daemon never judges another host dead: its runs are
        # recovered when that host's daemon starts again.
        return []

    def lock(self, name: str) -> contextlib.AbstractContextManager[bool]:
        return contextlib.nullcontext(True)

    def close(self) -> None:
        return None


def backend_url(url: str, lease: int) -> str:
    """The URL handed to tooz: the lease as etcd3gw's ``timeout`` unless
    the operator set one."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme.startswith("etcd3"):
        return url
    query = urllib.parse.parse_qs(parts.query)
    if "timeout" in query:
        return url
    extra = urllib.parse.urlencode({"timeout": lease})
    joined = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=joined))


class Group:
    """A member of the daemons' tooz group (or, ``daemon=False``, of the
    CLI group, owning nothing)."""

    coordinated = True

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        member_id: str,
        *,
        daemon: bool = True,
        clock: Any = time.monotonic,
    ) -> None:
        group = conf[GROUP]
        self.member_id = member_id
        self.daemon = daemon
        self.lease = float(group.lease)
        self.check_interval = float(group.check_interval)
        self.group = group.group.encode()
        self.cli_group = (group.group + "-cli").encode()
        self._url = backend_url(group.backend_url, group.lease)
        self._clock = clock
        self._lock = threading.Lock()
        self._coordinator: Any = None
        self._ring: Any = None
        self._members: frozenset[str] = frozenset({member_id})
        self._view = membership.View()

    def start(self) -> None:
        """Connect and join; raise tooz's error if the backend is away."""
        from tooz import coordination as tooz_coordination

        coordinator = tooz_coordination.get_coordinator(
            self._url, self.member_id.encode()
        )
        coordinator.start(start_heart=True)
        self._coordinator = coordinator
        if self.daemon:
            coordinator.join_group_create(
                self.group, capabilities={"weight": 1}
            )
            self._members = self._read_members(self.group) or self._members
            self._set_ring(self._members)
        else:
            coordinator.join_group_create(self.cli_group)
        LOG.info(
            "coordination: %s joined %s as %s; members: %s",
            self.member_id,
            (self.group if self.daemon else self.cli_group).decode(),
            "a daemon" if self.daemon else "a command",
            ", ".join(sorted(self._members)),
        )

    def _set_ring(self, members: frozenset[str]) -> None:
        """tooz's consistent hash ring over the members we see. Rebuilt
        from the membership itself at every look, rather than from join
        and leave events: a member that misses an event would keep a
        ring the others do not have."""
        from tooz import hashring

        with self._lock:
            self._ring = hashring.HashRing(sorted(m.encode() for m in members))

    def owns(self, key: str) -> bool:
        """Whether this daemon does the work keyed ``key`` (see
        :func:`cinderbak.membership.partition_key`)."""
        if self._ring is None:
            return not self.daemon
        with self._lock:
            nodes = self._ring.get_nodes(key.encode())
        return self.member_id.encode() in nodes

    def is_leader(self) -> bool:
        return (
            self.daemon
            and membership.leader_of(self._members) == self.member_id
        )

    def members(self) -> frozenset[str]:
        return self._members

    @property
    def beat_group(self) -> str | None:
        """The group this member beats for in the journal (None: a
        command, which owns no work and is never taken over)."""
        return self.group.decode() if self.daemon else None

    def check(
        self,
        hosts_with_work: Iterable[str],
        beats: Mapping[str, int] | None = None,
    ) -> list[str]:
        """Look at the group once: apply joins and leaves to the ring,
        rejoin if our membership lapsed, and return the hosts whose work
        is due for takeover (see :func:`membership.due_for_takeover`).

        ``beats`` are the group's journal heartbeats: a member the
        backend lost but that still beats keeps its share of the work
        and is not taken over.
        """
        if not self.daemon or self._coordinator is None:
            return []
        members = self._look()
        now = self._clock()
        commands: frozenset[str] | None = frozenset()
        if members is not None:
            commands = self._read_members(self.cli_group)
        if commands is None:
            # Without the commands' group, a command's runs could be
            # taken for a dead daemon's: no judgement this time.
            members, commands = None, frozenset()
        self._view = membership.observe(
            self._view,
            now,
            self.member_id,
            members,
            (h for h in hosts_with_work if h not in commands),
            beats,
            membership.stale_after(self.lease, self.check_interval),
        )
        if members is not None:
            self._share_between(self._view.live)
        return membership.due_for_takeover(self._view, now, self.lease)

    def _share_between(self, live: frozenset[str]) -> None:
        """Share the work between ``live`` (see :meth:`_set_ring`)."""
        if live and live != self._members:
            LOG.info(
                "coordination: work now shared between %s",
                ", ".join(sorted(live)),
            )
            self._set_ring(live)
            self._members = live

    def _look(self) -> frozenset[str] | None:
        from tooz import coordination as tooz_coordination

        try:
            members = self._read_members(self.group)
            if members is None:
                return None
            if self.member_id not in members:
                LOG.warning(
                    "coordination: %s is no longer in group %s (its lease "
                    "lapsed); joining again",
                    self.member_id,
                    self.group.decode(),
                )
                try:
                    self._coordinator.join_group(
                        self.group, capabilities={"weight": 1}
                    ).get()
                except tooz_coordination.MemberAlreadyExist:
                    pass
                members = self._read_members(self.group)
        except tooz_coordination.ToozError as exc:
            LOG.warning("coordination: cannot read the group: %s", exc)
            return None
        return members

    def _read_members(self, group: bytes) -> frozenset[str] | None:
        from tooz import coordination as tooz_coordination

        try:
            found = self._coordinator.get_members(group).get()
        except tooz_coordination.GroupNotCreated:
            return frozenset()
        except tooz_coordination.ToozError as exc:
            LOG.warning("coordination: cannot list %s: %s", group, exc)
            return None
        return frozenset(m.decode() for m in found)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[bool]:
        """A region-wide lock, held while a host's runs are recovered;
        yields False (without blocking) when another member holds it."""
        if self._coordinator is None:
            yield True
            return
        tooz_lock = self._coordinator.get_lock(f"cinderbak-{name}".encode())
        try:
            acquired = bool(tooz_lock.acquire(blocking=False))
        except Exception as exc:  # noqa: BLE001 - the backend is away
            LOG.warning("coordination: lock %s: %s", name, exc)
            acquired = False
        try:
            yield acquired
        finally:
            if acquired:
                with contextlib.suppress(Exception):
                    tooz_lock.release()

    def close(self) -> None:
        if self._coordinator is None:
            return
        with contextlib.suppress(Exception):
            group = self.group if self.daemon else self.cli_group
            self._coordinator.leave_group(group).get()
        with contextlib.suppress(Exception):
            self._coordinator.stop()
        self._coordinator = None


def connect(
    conf: cfg.ConfigOpts, member_id: str, *, daemon: bool
) -> Membership:
    """The membership the configuration asks for, started.

    A daemon that cannot join raises (tooz's error): started alone it
    would take every share of the work. A command that cannot join goes
    on alone, with a warning: it is one process an operator is watching,
    and daemons only take over hosts that are gone from both groups.
    """
    register_opts(conf)
    if not conf[GROUP].backend_url:
        return Solo(member_id)
    group = Group(conf, member_id, daemon=daemon)
    if daemon:
        group.start()
        return group
    from tooz import coordination as tooz_coordination

    try:
        group.start()
    except tooz_coordination.ToozError as exc:
        LOG.warning(
            "coordination: cannot join %s (%s); going on without it",
            group.cli_group.decode(),
            exc,
        )
        return Solo(member_id)
    return group
