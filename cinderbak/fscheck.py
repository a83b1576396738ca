"""Is the filesystem on a raw image copy sound? Checked without changing it.

Verification restores a backup and writes a sparse raw copy of the
restored volume (imagedigest.digest_image with a sink); this module tells
what filesystem the copy holds and checks it with the filesystem's own
tool in its no-modify mode:

* ext2/3/4: ``dumpe2fs -h`` says whether the journal still needs recovery
  (a crash-consistent copy of a mounted filesystem does), ``e2fsck -fn``
  checks everything else;
* xfs: ``xfs_repair -n``; a log that needs replaying is reported on its
  own ALERT line, corruption on other lines, both with exit status 1.

Neither tool replays a journal in that mode, so what it finds in a copy
that needs recovery may be an effect of the unreplayed journal: such a
copy is "needs-recovery", with what the tool said in the summary, not
"errors". Anything else (no filesystem, a partition table, LVM, another
filesystem) is "not-checked", with the reason.

The parsing below reads the English messages of e2fsprogs 1.47 and
xfsprogs 6.1 (the tools run with LC_ALL=C); it is pure and unit-tested
on captured output.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import shutil
import subprocess
import time

from oslo_config import cfg

GROUP = "verify"

DEFAULT_FSCK_TIMEOUT = 3600

OPTS = [
    cfg.StrOpt(
        "scratch_dir",
        default="$state_path/verify",
        help="Where verification writes the sparse raw copy of a restored "
        "volume to check its filesystem; needs room for the data of the "
        "largest volume verified (a copy that does not fit is not "
        "written and its filesystem is not checked).",
    ),
    cfg.IntOpt(
        "fsck_timeout",
        default=DEFAULT_FSCK_TIMEOUT,
        min=10,
        help="Seconds a filesystem check of one copy (probe, e2fsck -fn "
        "or xfs_repair -n) may take before it is stopped and reported "
        "as not checked.",
    ),
]

EXT_TYPES = frozenset({"ext2", "ext3", "ext4", "ext4dev"})
XFS = "xfs"
SUMMARY_LIMIT = 200
# Where the tools live when PATH lacks the sbin directories.
SBIN = ("/usr/sbin", "/sbin")


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


def scratch_dir(conf: cfg.ConfigOpts) -> str:
    return str(conf[GROUP].scratch_dir)


class Result(enum.StrEnum):
    CLEAN = "clean"
    NEEDS_RECOVERY = "needs-recovery"
    ERRORS = "errors"
    NOT_CHECKED = "not-checked"


@dataclasses.dataclass(frozen=True)
class FsCheck:
    """What the check of one image found."""

    fstype: str | None
    result: Result
    needs_recovery: bool
    exit_code: int | None  # of the checking tool; None when none ran
    summary: str  # one line, for the log and the backup's metadata

    @classmethod
    def not_checked(cls, reason: str, fstype: str | None = None) -> FsCheck:
        return cls(fstype, Result.NOT_CHECKED, False, None, shorten(reason))


def shorten(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """One line of at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _summarize(head: str, findings: list[str]) -> str:
    """'head: first; second (+N more)' within the summary limit."""
    if not findings:
        return shorten(head)
    shown = "; ".join(findings[:2])
    more = len(findings) - 2
    tail = f" (+{more} more)" if more > 0 else ""
    room = SUMMARY_LIMIT - len(head) - len(tail) - 2
    return shorten(f"{head}: {shorten(shown, max(room, 20))}{tail}")


# -- probing ---------------------------------------------------------


def parse_blkid_export(output: str) -> dict[str, str]:
    """Read ``blkid -o export`` output (KEY=value lines)."""
    fields = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper():
            fields[key] = value.replace("\\ ", " ")
    return fields


@dataclasses.dataclass(frozen=True)
class Probe:
    """What ``blkid -p`` made of an image: a filesystem type to check, or
    why there is nothing to check."""

    fstype: str | None
    reason: str | None = None


def classify_probe(exit_code: int, output: str, stderr: str) -> Probe:
    """Decide from ``blkid -p -o export`` what to check."""
    if exit_code == 2:
        return Probe(
            None,
            "no filesystem or partition table signature found (a blank "
            "volume, or one whose signature is damaged)",
        )
    if exit_code == 8:
        return Probe(
            None,
            "several signatures found, none trusted (blkid -p: ambivalent "
            "result)",
        )
    if exit_code != 0:
        return Probe(
            None,
            f"blkid -p failed (exit {exit_code}): {shorten(stderr, 120)}",
        )
    fields = parse_blkid_export(output)
    fstype = fields.get("TYPE")
    if fstype in EXT_TYPES or fstype == XFS:
        return Probe(fstype)
    if fstype:
        return Probe(
            fstype,
            f"{fstype} ({fields.get('USAGE', 'unknown use')}) is not "
            "checked: only ext2/3/4 and xfs are",
        )
    if "PTTYPE" in fields:
        return Probe(
            None,
            f"partition table ({fields['PTTYPE']}): filesystems inside "
            "partitions are not checked",
        )
    return Probe(None, "blkid -p found no filesystem type")


# -- ext2/3/4 ----------------------------------------------------------


def ext_needs_recovery(dumpe2fs_header: str) -> bool:
    """Does ``dumpe2fs -h`` list the needs_recovery feature (a journal
    with transactions not yet written to their final place)?"""
    for line in dumpe2fs_header.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Filesystem features":
            return "needs_recovery" in value.split()
    return False


_E2FSCK_NOISE = (
    re.compile(r"^e2fsck \d[\w.-]* \(.*\)$"),
    re.compile(r"^Pass \d[A-E]?: "),
    re.compile(r"^Warning: skipping journal recovery because"),
    re.compile(r"\*+ WARNING: Filesystem still has errors \*+$"),
    re.compile(r"^[A-Z][\w' ]*\? no$"),  # a prompt on its own line
    re.compile(r"^IGNORED\.$"),  # the answer to a checksum complaint
)
_E2FSCK_STATS = re.compile(r": (\d+/\d+ files) \([^)]*\), (\d+/\d+ blocks)$")
_E2FSCK_PROMPT = re.compile(r"\s+[A-Z][\w' ]*\? no$")
# Operational errors (exit 8) that say the tool, not the image, is the
# problem.
_E2FSCK_TOOL_LIMITS = ("unsupported feature", "Get a newer version")


def e2fsck_findings(output: str) -> list[str]:
    """The problems ``e2fsck -fn`` reported, one per entry, prompts and
    progress removed, first occurrence order."""
    findings: dict[str, None] = {}
    for raw in output.splitlines():
        line = raw.strip()
        if (
            not line
            or _E2FSCK_STATS.search(line)
            or any(p.search(line) for p in _E2FSCK_NOISE)
        ):
            continue
        findings[_E2FSCK_PROMPT.sub("", line)] = None
    return list(findings)


def e2fsck_stats(output: str) -> str | None:
    """'11/16384 files, 9513/65536 blocks' from e2fsck's last line."""
    for line in reversed(output.splitlines()):
        match = _E2FSCK_STATS.search(line.strip())
        if match:
            return f"{match[1]}, {match[2]}"
    return None


def judge_ext(
    fstype: str, exit_code: int, needs_recovery: bool, output: str
) -> FsCheck:
    """Turn ``e2fsck -fn``'s exit status and output into a verdict.

    Exit 0: nothing wrong; 4: problems left uncorrected (-n corrects
    nothing); 8: it could not check (a corrupt superblock or journal, or
    a feature this e2fsck does not know, which is ours to fix, not the
    image's). Without journal replay, problems in an image whose journal
    needs recovery may be replay's to fix: "needs-recovery".
    """
    findings = e2fsck_findings(output)
    tool = f"e2fsck -fn exit {exit_code}"
    # Beyond "errors left" (4) and "operational error" (8), or an e2fsck
    # too old for the filesystem: e2fsck could not judge it.
    if exit_code & ~(4 | 8) or (
        exit_code & 8
        and any(limit in f for f in findings for limit in _E2FSCK_TOOL_LIMITS)
    ):
        return FsCheck(
            fstype,
            Result.NOT_CHECKED,
            needs_recovery,
            exit_code,
            _summarize(f"{fstype} not checked: {tool}", findings),
        )
    if exit_code & 8:
        result = Result.ERRORS
        head = f"{fstype} errors ({tool}, could not finish)"
    elif needs_recovery:
        result = Result.NEEDS_RECOVERY
        head = f"{fstype} journal needs recovery; without replay {tool}"
        if not exit_code:
            head += ", no problems"
    elif exit_code:
        result = Result.ERRORS
        head = f"{fstype} errors ({tool})"
    else:
        stats = e2fsck_stats(output)
        head = f"{fstype} clean (e2fsck -fn)"
        return FsCheck(
            fstype,
            Result.CLEAN,
            False,
            0,
            shorten(f"{head}: {stats}" if stats else head),
        )
    # Count-only notes (free blocks/inodes) do not make an exit 0 unclean.
    shown = findings if exit_code else []
    return FsCheck(
        fstype, result, needs_recovery, exit_code, _summarize(head, shown)
    )


# -- xfs -------------------------------------------------------------------

_XFS_NOISE = (
    re.compile(r"^Phase \d+ - "),
    re.compile(r"^- "),  # progress, indented in the output
    re.compile(r"^Cannot get host filesystem geometry\.$"),
    re.compile(r"^Repair may fail if there is a sector size mismatch"),
    re.compile(r"^the image and the host filesystem\.$"),
    re.compile(r"^No modify flag set, skipping"),
    re.compile(r"^ignored because the -n option was used\."),
    re.compile(r"^which may be resolved by first mounting the filesystem"),
)
_XFS_DIRTY_LOG = "metadata changes in a log"


@dataclasses.dataclass(frozen=True)
class XfsReport:
    log_dirty: bool
    findings: list[str]


def parse_xfs_repair(output: str) -> XfsReport:
    """Split ``xfs_repair -n`` output into the dirty-log ALERT and the
    other problems it reports."""
    dirty = False
    findings: dict[str, None] = {}
    for raw in output.splitlines():
        line = raw.strip()
        if _XFS_DIRTY_LOG in line:
            dirty = True
            continue
        if not line or any(p.search(line) for p in _XFS_NOISE):
            continue
        findings[line] = None
    return XfsReport(dirty, list(findings))


def judge_xfs(exit_code: int, output: str) -> FsCheck:
    """Turn ``xfs_repair -n``'s exit status and output into a verdict:
    0 is clean; 1 with the ALERT about the log needs recovery (what else
    it says may be the unreplayed log's doing), 1 without it is
    corruption; anything else means it did not check."""
    report = parse_xfs_repair(output)
    tool = f"xfs_repair -n exit {exit_code}"
    if exit_code == 0 and not report.log_dirty:
        return FsCheck(
            XFS, Result.CLEAN, False, 0, "xfs clean (xfs_repair -n)"
        )
    if exit_code in (0, 1) and report.log_dirty:
        head = f"xfs log needs replay; without replay {tool}"
        if not report.findings:
            head += ", no other problems"
        return FsCheck(
            XFS,
            Result.NEEDS_RECOVERY,
            True,
            exit_code,
            _summarize(head, report.findings),
        )
    if exit_code == 1:
        return FsCheck(
            XFS,
            Result.ERRORS,
            False,
            1,
            _summarize(f"xfs errors ({tool})", report.findings),
        )
    return FsCheck(
        XFS,
        Result.NOT_CHECKED,
        False,
        exit_code,
        _summarize(f"xfs not checked: {tool}", report.findings[-2:]),
    )


# -- running the tools -----------------------------------------------------


class _TimedOut(Exception):
    pass


def _tool(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    for directory in SBIN:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _run(
    tool: str, args: list[str], deadline: float
) -> subprocess.CompletedProcess[str]:
    """Run a read-only tool (a path from _tool) in the C locale, since its
    messages are parsed; raise _TimedOut when the deadline passes (the
    tool is killed)."""
    name = os.path.basename(tool)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _TimedOut(name)
    try:
        return subprocess.run(
            [name, *args],
            executable=tool,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=remaining,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, LC_ALL="C", LANG="C"),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _TimedOut(name) from exc


def check_filesystem(
    raw_image_path: str,
    *,
    conf: cfg.ConfigOpts | None = None,
    timeout: float | None = None,
) -> FsCheck:
    """Detect and check the filesystem of a raw image file, read-only.

    ``timeout`` (default ``[verify] fsck_timeout`` from ``conf``, else
    that option's default) bounds the whole check; past it the check is
    "not-checked". Raise FileNotFoundError when the file does not exist.
    """
    if not os.path.isfile(raw_image_path):
        raise FileNotFoundError(raw_image_path)
    if timeout is None:
        timeout = (
            conf[GROUP].fsck_timeout
            if conf is not None
            else DEFAULT_FSCK_TIMEOUT
        )
    deadline = time.monotonic() + timeout
    try:
        return _check(raw_image_path, deadline)
    except _TimedOut as exc:
        return FsCheck.not_checked(
            f"check timed out after {timeout:g} s (in {exc.args[0]})"
        )


def _check(path: str, deadline: float) -> FsCheck:
    blkid = _tool("blkid")
    if blkid is None:
        return FsCheck.not_checked("blkid is not installed (util-linux)")
    probed = _run(blkid, ["-p", "-o", "export", path], deadline)
    probe = classify_probe(probed.returncode, probed.stdout, probed.stderr)
    if probe.reason:
        return FsCheck.not_checked(probe.reason, probe.fstype)
    if probe.fstype == XFS:
        return _check_xfs(path, deadline)
    return _check_ext(probe.fstype or "", path, deadline)


def _check_ext(fstype: str, path: str, deadline: float) -> FsCheck:
    dumpe2fs, e2fsck = _tool("dumpe2fs"), _tool("e2fsck")
    if dumpe2fs is None or e2fsck is None:
        return FsCheck.not_checked("e2fsprogs is not installed", fstype)
    header = _run(dumpe2fs, ["-h", path], deadline)
    # An unreadable header is e2fsck's to report.
    recovery = header.returncode == 0 and ext_needs_recovery(header.stdout)
    checked = _run(e2fsck, ["-f", "-n", path], deadline)
    output = _unpath(checked.stdout + checked.stderr, path)
    return judge_ext(fstype, checked.returncode, recovery, output)


def _check_xfs(path: str, deadline: float) -> FsCheck:
    xfs_repair = _tool("xfs_repair")
    if xfs_repair is None:
        return FsCheck.not_checked("xfsprogs is not installed", XFS)
    checked = _run(xfs_repair, ["-n", "-f", path], deadline)
    output = _unpath(checked.stdout + checked.stderr, path)
    return judge_xfs(checked.returncode, output)


def _unpath(output: str, path: str) -> str:
    """The copy's (temporary) path means nothing in a summary."""
    return output.replace(path, "image")
