"""What the operator commands share: escaped tables, a policy filter and
an exit code."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from cliff.lister import Lister
from oslo_config import cfg

from cinderbak.escape import escape_rows

if TYPE_CHECKING:
    from cinderbak.cmd.cli import CinderbakApp
    from cinderbak.service import Parts

# What take_action returns: column names and rows.
Table = tuple[Sequence[str], Iterable[Sequence[Any]]]


class EscapedLister(Lister):
    """A table whose text cells are escaped in every output format:
    volume names and metadata come from tenants (see escape.py)."""

    def produce_output(
        self,
        parsed_args: argparse.Namespace,
        column_names: Sequence[str],
        data: Iterable[Sequence[Any]],
    ) -> int:
        return super().produce_output(
            parsed_args, column_names, escape_rows(data)
        )

    def app_conf(self) -> cfg.ConfigOpts:
        """The configuration, for commands that need no cloud."""
        return cast("CinderbakApp", self.app).conf

    def parts(self) -> Parts:
        """The application's parts (cliff types ``app`` as its base)."""
        return cast("CinderbakApp", self.app).parts()


class PolicyLister(EscapedLister):
    """A table of results over some policies; exits non-zero on failure.

    Subclasses name the verb of their ``--policy`` help and set
    ``self.exit_code`` in ``take_action``.
    """

    verb = "use"
    exit_code = 0

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--policy",
            action="append",
            default=[],
            metavar="NAME",
            help=f"{self.verb} only this policy (repeatable; default: all)",
        )
        return parser

    def run(self, parsed_args: argparse.Namespace) -> int:
        super().run(parsed_args)
        return self.exit_code
