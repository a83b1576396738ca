"""``cinderbak dr``: the DR catalog, imports into another region, drills.

``catalog``, ``export`` and ``import`` need only the catalog (on the
backup cluster) or an exported file, and the DR cloud: they work with
region A's Cinder, database and the cinderbak journal all gone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib

from cinderbak import dr_catalog, dr_drill, dr_import, journal
from cinderbak.cmd.base import EscapedLister, Table
from cinderbak.dr_catalog import CatalogError, Entry, ImportRow, Outcome
from cinderbak.dr_store import CatalogStore


class _CatalogCommand(EscapedLister):
    exit_code = 0

    def run(self, parsed_args: argparse.Namespace) -> int:
        super().run(parsed_args)
        return self.exit_code

    def fail(self, message: str) -> Table:
        self.app.stderr.write(f"cinderbak: {message}\n")
        self.exit_code = 2
        return Entry.COLUMNS, []

    def read_entries(self, source: str | None = None) -> list[Entry] | str:
        """The catalog's entries (from the backup cluster, or from a file
        written by ``dr export``), or what went wrong."""
        if source:
            try:
                text = pathlib.Path(source).read_text(encoding="utf-8")
                return dr_catalog.parse_export(text, source)
            except (OSError, CatalogError) as exc:
                return str(exc)
        conf = self.app_conf()
        try:
            store = CatalogStore.from_conf(conf)
        except Exception as exc:  # noqa: BLE001 - said plainly, exit 2
            return f"cannot reach the DR catalog ([dr] catalog_conf): {exc}"
        if store is None:
            return "no DR catalog configured: set [dr] catalog_conf"
        try:
            entries, problems = store.entries()
        except Exception as exc:  # noqa: BLE001 - said plainly, exit 2
            return f"cannot read the DR catalog: {exc}"
        finally:
            store.close()
        for problem in problems:
            self.app.stderr.write(f"cinderbak: DR catalog: {problem}\n")
        return list(entries.values())


class DrCatalog(_CatalogCommand):
    """List the DR catalog: one entry per backup, oldest first."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--project", metavar="PROJECT_ID")
        parser.add_argument(
            "--from",
            dest="source",
            metavar="FILE",
            help="read a file written by 'dr export' instead",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        entries = self.read_entries(parsed_args.source)
        if isinstance(entries, str):
            return self.fail(entries)
        chosen = dr_catalog.select(entries, project=parsed_args.project)
        return Entry.COLUMNS, [e.row() for e in chosen]


class DrExport(_CatalogCommand):
    """Write the whole DR catalog to a file, for off-site keeping."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--to", required=True, metavar="FILE")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        entries = self.read_entries()
        if isinstance(entries, str):
            return self.fail(entries)
        doc = dr_catalog.export_document(
            entries, datetime.datetime.now(datetime.UTC)
        )
        path = parsed_args.to
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        self.app.stderr.write(f"{len(entries)} entries written to {path}\n")
        return ("file", "entries"), [(path, len(entries))]


class DrImport(_CatalogCommand):
    """Register the catalog's backups in another Cinder (import_record).

    Each backup goes into its own project (the importing user needs the
    admin role there); one already known there is skipped. A restore of
    an incremental needs its parents: they are imported with it.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--cloud",
            required=True,
            metavar="DR_CLOUD",
            help="clouds.yaml entry of the region to import into",
        )
        parser.add_argument("--project", metavar="PROJECT_ID")
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--volume", metavar="VOLUME_ID")
        which.add_argument("--group", metavar="GROUP")
        which.add_argument("--all", action="store_true")
        parser.add_argument(
            "--from",
            dest="source",
            metavar="FILE",
            help="import from a file written by 'dr export'",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=600.0,
            help="seconds one import may take (default 600)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        entries = self.read_entries(parsed_args.source)
        if isinstance(entries, str):
            return self.fail(entries)
        try:
            chosen = dr_catalog.select(
                entries,
                project=parsed_args.project,
                volume=parsed_args.volume,
                group=parsed_args.group,
            )
        except dr_catalog.SelectionError as exc:
            return self.fail(str(exc))
        conf = self.app_conf()
        try:
            dr = dr_import.DrCloud(
                parsed_args.cloud, api_timeout=conf.cloud.api_timeout
            )
        except Exception as exc:  # noqa: BLE001 - said plainly, exit 2
            return self.fail(f"cannot connect to {parsed_args.cloud}: {exc}")
        try:
            rows = dr_import.import_entries(
                dr,
                chosen,
                allowed_projects=(
                    [parsed_args.project] if parsed_args.project else None
                ),
                timeout=parsed_args.timeout,
            )
        finally:
            dr.close()
        counts = {
            what: sum(r.result == what for r in rows)
            for what in (Outcome.IMPORTED, Outcome.SKIPPED, Outcome.REFUSED)
        }
        self.app.stderr.write(
            ", ".join(f"{n} {what}" for what, n in counts.items()) + "\n"
        )
        self.exit_code = 1 if counts[Outcome.REFUSED] else 0
        return ImportRow.COLUMNS, [r.row() for r in rows]


class DrDrill(_CatalogCommand):
    """Import a sample of the catalog into the DR region, restore it
    there, compare checksums, delete what was made; record the verdict
    and the recovery time per GiB in the journal. Exits 1 on failure."""

    def take_action(self, parsed_args: argparse.Namespace) -> Table:
        conf = self.app_conf()
        store = None
        store_journal = None
        try:
            if conf.journal.connection.startswith("sqlite:///"):
                os.makedirs(conf.state_path, mode=0o750, exist_ok=True)
            store_journal = journal.Journal(conf)
            store_journal.upgrade()
            store = CatalogStore.from_conf(conf)
            result, summary, rows = dr_drill.Drill(
                conf, store_journal, store
            ).run(datetime.datetime.now(datetime.UTC).replace(microsecond=0))
        except dr_drill.DrillError as exc:
            return self.fail(str(exc))
        finally:
            if store is not None:
                store.close()
            if store_journal is not None:
                store_journal.close()
        self.app.stderr.write(
            f"drill {result}: {summary['backups']} backups, "
            f"{summary['gib']} GiB in {summary['seconds']} s, "
            f"{summary['rto_seconds_per_gib']} s per GiB\n"
        )
        self.exit_code = 1 if result == "failed" else 0
        return dr_drill.DrillRow.COLUMNS, [r.row() for r in rows]
