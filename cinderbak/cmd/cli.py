"""``cinderbak``: the operator's command line (cliff: table, JSON, CSV)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cliff.app import App
from cliff.command import Command
from cliff.commandmanager import CommandManager
from openstack.exceptions import ConfigException
from oslo_config import cfg

from cinderbak import config_check, env_check, logs, opts, service
from cinderbak.cloud import API_ERRORS, CloudTooOld
from cinderbak.cmd import settle_start_up
from cinderbak.version import version_string


class CinderbakApp(App):
    """Reads the oslo.config files first, then dispatches to a command."""

    def __init__(self, conf: cfg.ConfigOpts | None = None) -> None:
        super().__init__(
            description="Operate cinderbak: run policies, inspect runs.",
            version=version_string(),
            command_manager=CommandManager("cinderbak.cli"),
            deferred_help=True,
        )
        self.conf = conf or cfg.CONF
        self._parts: service.Parts | None = None

    def build_option_parser(
        self,
        description: str | None,
        version: str | None,
        argparse_kwargs: dict[str, Any] | None = None,
    ) -> argparse.ArgumentParser:
        parser = super().build_option_parser(
            description, version, argparse_kwargs
        )
        parser.add_argument(
            "--config-file",
            action="append",
            default=[],
            metavar="PATH",
            help="cinderbak configuration file (repeatable; default: "
            "/etc/cinderbak/cinderbak.conf)",
        )
        parser.add_argument(
            "--config-dir",
            action="append",
            default=[],
            metavar="DIR",
            help="directory of *.conf files read after --config-file",
        )
        return parser

    def configure_logging(self) -> None:
        """Logging belongs to oslo.log, set up in initialize_app."""

    def initialize_app(self, argv: list[str]) -> None:
        opts.register_opts(self.conf)
        # Logs go to stderr so that `-f json` output can be piped.
        self.conf.set_default("use_stderr", True)
        args = [f"--config-file={path}" for path in self.options.config_file]
        args += [f"--config-dir={path}" for path in self.options.config_dir]
        self.conf(args=args, project="cinderbak", version=version_string())
        if self.options.debug or self.options.verbose_level > 1:
            self.conf.set_override("debug", True)
        logs.setup(self.conf)

    def parts(self) -> service.Parts:
        """Connect on first use, so `--help` needs no cloud.

        The configuration goes through the daemon's own check first; its
        problems are printed one per line and the command exits 2.
        """
        if self._parts is None:
            problems = config_check.validate(
                self.conf, reach=True, reach_cloud=False
            )
            if not problems:
                try:
                    self._parts = service.build(self.conf)
                except CONNECT_ERRORS as exc:
                    problems = env_check.cloud_failure(self.conf, exc)
            if problems:
                for problem in problems:
                    self.stderr.write(f"cinderbak: {problem}\n")
                self.stderr.flush()
                raise SystemExit(2)
        assert self._parts is not None
        return self._parts

    def clean_up(
        self, cmd: Command, result: int, err: BaseException | None
    ) -> None:
        if self._parts is not None:
            self._parts.close()


CONNECT_ERRORS = (*API_ERRORS, CloudTooOld, ConfigException)
"""What connecting to the cloud raises when the cloud, not cinderbak, is
at fault: said as one problem line, exit 2."""


def main(argv: list[str] | None = None) -> int:
    settle_start_up()
    return CinderbakApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
