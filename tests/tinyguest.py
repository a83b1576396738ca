"""Drive ``tools/tinyguest`` from tests: real TCG guests under a private
libvirtd, and what the guest wrote, read from its data disk image.

The guest's writer appends ``SEQ UPTIME EPOCH`` to ``/writer.log`` on its
ext4 data disk about every 100 ms and fsyncs it. The disk has no journal,
so ``debugfs`` reads the file from the image at any time, without mounting
it; a freeze shows as a gap in UPTIME (the guest's monotonic clock).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import libvirt
import libvirt_qemu
import tenacity

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "tinyguest"


class TinyGuestError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Guest:
    name: str
    uuid: str
    disk: Path
    console: Path


@dataclasses.dataclass(frozen=True)
class WriterLine:
    seq: int
    uptime: float  # guest seconds since boot, 10 ms resolution
    epoch: int  # guest wall clock, whole seconds


class TinyGuest:
    """One state directory of tools/tinyguest (default ``<repo>/.tinyguest``,
    or ``$TINYGUEST_STATE``)."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.env = dict(os.environ)
        if state_dir is not None:
            self.env["TINYGUEST_STATE"] = str(state_dir)

    def run(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run(
            [str(TOOL), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise TinyGuestError(
                f"tinyguest {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stderr}"
            )
        return proc.stdout

    def state(self) -> dict:
        return json.loads(self.run("status"))

    @property
    def uri(self) -> str:
        return self.state()["uri"]

    def libvirtd_pid(self) -> int:
        state_dir = Path(self.state()["state_dir"])
        return int((state_dir / "run" / "libvirtd.pid").read_text())

    def ensure_up(self) -> str:
        """Build if needed, start the daemons; return the libvirt URI."""
        self.run("build")
        self.run("up")
        return self.uri

    def start(
        self,
        name: str,
        uuid: str,
        *,
        agent: bool = True,
        channel: bool = True,
        hook_sleep: int = 0,
    ) -> Guest:
        """Boot a transient domain and wait until it (and its agent) is
        ready."""
        args = ["up", "--name", name, "--uuid", uuid]
        if not channel:
            args.append("--no-channel")
        elif not agent:
            args.append("--no-agent")
        if hook_sleep:
            args += ["--hook-sleep", str(hook_sleep)]
        self.run(*args)
        info = self.state()["domains"][name]
        guest = Guest(name, uuid, Path(info["disk"]), Path(info["console"]))
        if agent and channel:
            conn = libvirt.open(self.uri)
            try:
                wait_agent(conn, uuid)
            finally:
                conn.close()
        return guest

    def destroy(self, name: str) -> None:
        self.run("destroy", name)

    def restart_libvirtd(self) -> None:
        self.run("restart-libvirtd")

    def down(self) -> None:
        self.run("down")


def agent_command(
    conn: libvirt.virConnect, uuid: str, command: str, timeout: int = 10
) -> object:
    """Run one guest agent command; return its "return" value."""
    dom = conn.lookupByUUIDString(uuid)
    reply = libvirt_qemu.qemuAgentCommand(
        dom, json.dumps({"execute": command}), timeout, 0
    )
    return json.loads(reply)["return"]


def fsfreeze_status(conn: libvirt.virConnect, uuid: str) -> str:
    """Return "frozen" or "thawed", as the guest agent sees it."""
    return str(agent_command(conn, uuid, "guest-fsfreeze-status"))


def wait_agent(
    conn: libvirt.virConnect, uuid: str, timeout: float = 30
) -> None:
    """Wait until the guest agent answers a ping."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_fixed(0.2),
        retry=tenacity.retry_if_exception_type(libvirt.libvirtError),
        reraise=True,
    )
    retrying(agent_command, conn, uuid, "guest-ping", 2)


def read_writer_log(disk: Path) -> list[WriterLine]:
    """Read the writer's lines from the data disk image (debugfs)."""
    proc = subprocess.run(
        ["debugfs", "-R", "cat /writer.log", str(disk)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = []
    for text in proc.stdout.splitlines():
        fields = text.split()
        # The last line may be cut short while the guest writes it.
        if len(fields) == 3 and all(
            f.replace(".", "").isdigit() for f in fields
        ):
            lines.append(
                WriterLine(int(fields[0]), float(fields[1]), int(fields[2]))
            )
    return lines


def largest_gap(lines: list[WriterLine]) -> tuple[float, WriterLine]:
    """Return the largest uptime gap between consecutive lines, and the
    line after it."""
    gap, after = max(
        (b.uptime - a.uptime, b)
        for a, b in zip(lines, lines[1:], strict=False)
    )
    return gap, after
