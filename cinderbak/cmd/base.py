"""What the operator commands share: escaped tables, a policy filter and
an exit code."""

from __future__ import annotations

from cliff.lister import Lister

from cinderbak.escape import escape_rows


class EscapedLister(Lister):
    """A table whose text cells are escaped in every output format:
    volume names and metadata come from tenants (see escape.py)."""

    def produce_output(self, parsed_args, column_names, data):
        return super().produce_output(
            parsed_args, column_names, escape_rows(data)
        )


class PolicyLister(EscapedLister):
    """A table of results over some policies; exits non-zero on failure.

    Subclasses name the verb of their ``--policy`` help and set
    ``self.exit_code`` in ``take_action``.
    """

    verb = "use"
    exit_code = 0

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--policy",
            action="append",
            default=[],
            metavar="NAME",
            help=f"{self.verb} only this policy (repeatable; default: all)",
        )
        return parser

    def run(self, parsed_args) -> int:
        super().run(parsed_args)
        return self.exit_code
