"""What the operator commands share: a policy filter and an exit code."""

from __future__ import annotations

from cliff.lister import Lister


class PolicyLister(Lister):
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
