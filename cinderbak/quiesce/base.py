"""The quiescer contract: freeze and thaw a server's filesystems.

A quiescer is a driver loaded by stevedore from the ``cinderbak.quiescers``
entry-point namespace. Each driver *declares* what it can do in
``CAPABILITIES`` (as tooz drivers declare ``CHARACTERISTICS``), and
:func:`load_quiescer` refuses a driver that lacks a capability the
configuration needs, at start-up rather than at the first backup.

Every failure is a :class:`QuiesceError` whose message names the server and
its compute host and says what it means for the operator.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Set
from typing import cast

from oslo_config import cfg
from stevedore import driver as sd_driver
from stevedore import exception as sd_exception
from stevedore import extension as sd_extension

NAMESPACE = "cinderbak.quiescers"


class Capability(enum.StrEnum):
    """What a quiescer can promise."""

    # Freeze flushes and blocks the guest's filesystems, so a copy taken
    # while frozen is application-consistent ("quiesced"), not crash-only.
    APPLICATION_CONSISTENT = "application_consistent"


@dataclasses.dataclass(frozen=True)
class ServerRef:
    """A Nova server and the compute host it runs on.

    ``host`` is the volume attachment's ``attached_host`` / ``host_name``;
    None when Cinder does not know it.
    """

    server_id: str
    host: str | None = None

    def __str__(self) -> str:
        return f"server {self.server_id} on host {self.host or '(unknown)'}"


class QuiesceError(Exception):
    """Base of every quiesce failure.

    ``server`` is the server concerned (None for errors about the driver
    itself), ``detail`` the underlying message (e.g. libvirt's), ``code``
    the libvirt error code when there is one. ``guest_may_be_frozen`` says
    whether the failed call may have frozen the guest anyway: when it is
    True a thaw is mandatory (a guest agent timeout does not mean thawed).
    """

    # Subclasses say what it means and what to do; {server} and {host}
    # are filled in.
    meaning = "quiescing {server} on host {host} failed"

    def __init__(
        self,
        server: ServerRef | None = None,
        detail: str = "",
        *,
        code: int | None = None,
        guest_may_be_frozen: bool = True,
    ) -> None:
        self.server = server
        self.detail = detail
        self.code = code
        self.guest_may_be_frozen = guest_may_be_frozen
        super().__init__(self._message())

    def _message(self) -> str:
        server = self.server or ServerRef("?")
        text = self.meaning.format(
            server=f"server {server.server_id}",
            server_id=server.server_id,
            host=server.host or "(unknown)",
        )
        if self.detail:
            text += f" [{self.detail}]"
        return text


class DomainNotFound(QuiesceError):
    meaning = (
        "{server} has no libvirt domain on host {host}: it was deleted, "
        "migrated or is not a libvirt guest; check the volume attachment's "
        "host (Nova uses the server UUID as the domain UUID)"
    )


class AgentNotConfigured(QuiesceError):
    meaning = (
        "{server} on host {host} has no guest agent channel: set the image "
        "property hw_qemu_guest_agent=yes and rebuild the server, or set "
        "cinderbak:quiesce=off; backups of it can only be crash-consistent"
    )


class AgentNotResponding(QuiesceError):
    meaning = (
        "the guest agent in {server} on host {host} did not answer in time: "
        "a freeze hook in the guest may be slow or the guest overloaded; "
        "the guest may still be frozen and must be thawed"
    )


class AgentNotRunning(AgentNotResponding):
    meaning = (
        "guest agent not running in {server} on host {host}; install and "
        "start qemu-guest-agent in the guest, or backups of it stay "
        "crash-consistent"
    )


class HostUnreachable(QuiesceError):
    meaning = (
        "cannot reach the hypervisor of {server} on host {host}: check that "
        "libvirtd runs there and that this daemon may connect to it "
        "(URI, TLS certificates, firewall)"
    )


class QuiesceFailed(QuiesceError):
    """Any other failure."""

    meaning = "freezing or thawing {server} on host {host} failed"


class ThawFailed(QuiesceError):
    meaning = (
        "COULD NOT THAW {server} on host {host}: its filesystems may still "
        "be frozen and every write in the guest blocks until they are "
        "thawed; thaw it by hand now (virsh domfsthaw {server_id} on host "
        "{host}) and check the guest agent"
    )


class QuiesceRequiredError(QuiesceError):
    meaning = (
        "{server} on host {host} could not be frozen and its policy requires "
        "an application-consistent backup (cinderbak:quiesce=required), so "
        "no backup was taken; fix the cause in brackets or set "
        "cinderbak:quiesce=preferred to accept crash-consistent backups"
    )


class QuiescerNotFound(QuiesceError):
    """No quiescer of that name is installed."""

    def __init__(self, name: str, available: Set[str]) -> None:
        self.name = name
        self.available = frozenset(available)
        super().__init__(guest_may_be_frozen=False)

    def _message(self) -> str:
        installed = ", ".join(sorted(self.available)) or "none"
        return (
            f"no quiescer named {self.name!r} in entry-point namespace "
            f"{NAMESPACE}; installed: {installed}"
        )


class MissingCapability(QuiesceError):
    """The configured quiescer cannot do what the configuration needs."""

    def __init__(self, name: str, missing: Set[Capability]) -> None:
        self.name = name
        self.missing = frozenset(missing)
        super().__init__(guest_may_be_frozen=False)

    def _message(self) -> str:
        return (
            f"quiescer {self.name!r} lacks capability "
            f"{', '.join(sorted(self.missing))}, which the configuration "
            "requires; configure a quiescer that has it"
        )


class Quiescer(abc.ABC):
    """Freezes and thaws the filesystems of a server's guest.

    Implementations are thread-safe: the freeze window thaws from its
    watchdog thread while the caller's thread may still be inside freeze.
    """

    #: What this driver can promise; see :class:`Capability`.
    CAPABILITIES: frozenset[Capability] = frozenset()

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf

    @abc.abstractmethod
    def freeze(self, server: ServerRef) -> int:
        """Freeze the server's filesystems; return how many were frozen.

        Raise a QuiesceError subclass; its ``guest_may_be_frozen`` says
        whether the guest may be frozen all the same.
        """

    @abc.abstractmethod
    def thaw(self, server: ServerRef) -> int:
        """Thaw the server's filesystems; return how many were thawed.

        Thawing a guest that is not frozen returns 0. Raise a QuiesceError.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do
        """Release connections; the quiescer may not be used afterwards."""


def load_quiescer(
    name: str,
    conf: cfg.ConfigOpts,
    required: Set[Capability] = frozenset(),
) -> Quiescer:
    """Given a driver name, return an instance built with ``conf``.

    Raise QuiescerNotFound for an unknown name and MissingCapability when
    the driver lacks one of ``required`` (checked before the driver is
    instantiated, so no connection is opened for nothing).
    """
    try:
        manager: sd_driver.DriverManager[type[Quiescer]] = (
            sd_driver.DriverManager(NAMESPACE, name, invoke_on_load=False)
        )
    except sd_exception.NoMatches:
        raise QuiescerNotFound(name, _installed()) from None
    # invoke_on_load=False: the driver is the plugin class itself.
    cls = cast(type[Quiescer], manager.driver)
    missing = frozenset(required) - frozenset(cls.CAPABILITIES)
    if missing:
        raise MissingCapability(name, missing)
    return cls(conf)


def _installed() -> frozenset[str]:
    manager: sd_extension.ExtensionManager[type[Quiescer]] = (
        sd_extension.ExtensionManager(NAMESPACE, invoke_on_load=False)
    )
    return frozenset(manager.names())
