"""``cinderbak files ls|get|find``: browse a backup and fetch files from it,
without restoring the whole volume (see ``cinderbak/filerestore.py``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cliff.lister import Lister

from cinderbak import extract, filelayout, filerestore
from cinderbak.cmd.cli import CinderbakApp


class _FilesCommand(Lister):
    """Opens one backup read-only; says whose it is first."""

    exit_code = 0

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="BACKUP", help="backup id")
        parser.add_argument(
            "--project",
            metavar="PROJECT",
            help="refuse unless the backup belongs to this project (id or "
            "name): the project you act for",
        )
        parser.add_argument(
            "--filesystem",
            metavar="DEVICE",
            help="filesystem to open when the backup holds several (as "
            "named in the 'also found' line, e.g. /dev/sda2, /dev/vg/lv); "
            "default: the largest",
        )
        parser.add_argument(
            "--no-restore",
            action="store_true",
            help="fail instead of restoring to a scratch volume when the "
            "backup cannot be read on the backup cluster",
        )
        return parser

    def announce(self, line: str) -> None:
        self.app.stderr.write(line + "\n")
        self.app.stderr.flush()

    def opened(self, parsed_args: argparse.Namespace) -> Any:
        app = self.app
        assert isinstance(app, CinderbakApp)
        return filerestore.open_backup(
            app.parts(),
            parsed_args.backup,
            project=parsed_args.project,
            filesystem=parsed_args.filesystem,
            announce=self.announce,
            allow_restore=not parsed_args.no_restore,
        )

    def fail(self, exc: Exception) -> tuple[tuple[str, ...], list[Any]]:
        """Say why (FilesError, BackupFsError, or libguestfs's own
        RuntimeError) and exit 1."""
        self.app.stderr.write(f"cannot read the backup: {exc}\n")
        self.exit_code = 1
        return (), []

    def run(self, parsed_args: argparse.Namespace) -> int:
        super().run(parsed_args)
        return self.exit_code


class FilesLs(_FilesCommand):
    """List a directory of a backup: name, type, size, mode, mtime, target.

    Names are shown with control characters escaped. The backup is opened
    read-only; a filesystem that needed recovery is read without replaying
    its journal, and the command says so.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "path", metavar="PATH", nargs="?", default="/", help="default: /"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        try:
            with self.opened(parsed_args) as fs:
                rows = filerestore.list_rows(fs, parsed_args.path)
        except (RuntimeError, FileNotFoundError) as exc:
            return self.fail(exc)
        return filelayout.ENTRY_COLUMNS, rows


class FilesFind(_FilesCommand):
    """Find entries of a backup whose name matches a shell PATTERN."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "pattern", metavar="PATTERN", help="e.g. '*.conf' (quote it)"
        )
        parser.add_argument(
            "--under", metavar="PATH", default="/", help="default: /"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        try:
            with self.opened(parsed_args) as fs:
                rows = filerestore.find_rows(
                    fs, parsed_args.pattern, parsed_args.under
                )
        except (RuntimeError, FileNotFoundError) as exc:
            return self.fail(exc)
        return filelayout.ENTRY_COLUMNS, rows


class FilesGet(_FilesCommand):
    """Fetch files or whole directories of a backup into DIR, or as a tar
    stream on stdout (``--to -``), each under its full path from the
    backup's root, keeping mode (without setuid/setgid/sticky) and mtime.

    Nothing is written outside DIR: symlinks are recreated, never
    followed; device nodes, FIFOs and sockets are not created; existing
    files are not overwritten. One row per entry says what happened.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("paths", metavar="PATH", nargs="+")
        parser.add_argument(
            "--to",
            metavar="DIR",
            required=True,
            help="an existing directory, or - for a tar stream on stdout",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        to_stdout = parsed_args.to == "-"
        if not to_stdout and not os.path.isdir(parsed_args.to):
            return self.fail(
                FileNotFoundError(f"--to {parsed_args.to}: no such directory")
            )
        sink: extract.DirSink | extract.TarSink
        if to_stdout:
            # The tar stream owns stdout; the table goes to stderr.
            out = sys.stdout.buffer
            self.app.stdout = self.app.stderr
            sink = extract.TarSink(out)
        else:
            sink = extract.DirSink(parsed_args.to)
        try:
            with self.opened(parsed_args) as fs:
                fetched = filerestore.fetch(fs, parsed_args.paths, sink)
                sink.finish()
        except (RuntimeError, FileNotFoundError) as exc:
            return self.fail(exc)
        finally:
            sink.close()
        skipped = sum(r.result != "written" for r in fetched.rows)
        rate = (
            fetched.bytes / 2**20 / fetched.seconds if fetched.seconds else 0
        )
        self.announce(
            f"{len(fetched.rows) - skipped} entries written, {skipped} "
            f"skipped; {fetched.bytes} bytes of file data in "
            f"{fetched.seconds:.1f} s ({rate:.1f} MiB/s)"
        )
        return extract.ROW_COLUMNS, [r.as_tuple() for r in fetched.rows]
