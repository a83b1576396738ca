"""Tenant strings reach the operator's terminal escaped, never raw."""

import io
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cinderbak import escape, logs, restore
from cinderbak.cmd.base import EscapedLister


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("db-01", "db-01"),
        ("données-été", "données-été"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
        ("a\nINFO fake line", "a\\nINFO fake line"),
        ("tab\there", "tab\\there"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("\r\x08\x7f", "\\r\\x08\\x7f"),
    ],
)
def test_unprintable_characters_are_spelled_out(raw, shown):
    assert escape.escape(raw) == shown


@given(st.text())
def test_escaped_text_is_printable_and_printable_text_is_unchanged(text):
    shown = escape.escape(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text


def test_table_cells_escaped_numbers_kept():
    rows = list(escape.escape_rows([("v\x1b[2J", 3, None, 1.5)]))
    assert rows == [("v\\x1b[2J", 3, None, 1.5)]


@given(
    st.lists(
        st.one_of(st.text(), st.integers(), st.none(), st.floats()),
        max_size=6,
    )
)
def test_a_row_escaped_at_once_is_each_cell_escaped(cells):
    assert escape.escape_row(cells) == tuple(
        escape.escape_cell(cell) for cell in cells
    )


class _App:
    def __init__(self) -> None:
        self.stdout = io.StringIO()


class _Names(EscapedLister):
    """A command of ours listing tenant-chosen names."""

    def take_action(self, parsed_args):
        return ("volume_name", "size"), [("\x1b]0;pwned\x07", 1)]


@pytest.mark.parametrize("fmt", ["table", "value", "csv", "json"])
def test_every_output_format_of_our_commands_is_escaped(fmt):
    app = _App()
    command = _Names(app, None)
    args = command.get_parser("names").parse_args(["-f", fmt])
    command.run(args)
    out = app.stdout.getvalue()
    assert "\x1b" not in out and "\x07" not in out
    assert "pwned" in out


def test_the_overwrite_confirmation_shows_the_name_escaped():
    backup = restore.BackupFacts("b1", "p1", 1, "available")
    target = restore.VolumeFacts("v1", "db\x1b[8m", "p1", 1, "available")
    [reason] = restore.refusals(backup, target, confirmed=False)
    assert "volume v1 (db\\x1b[8m) in project p1" in reason
    assert "\x1b" not in reason


def test_log_lines_with_tenant_text_are_escaped():
    record = logging.LogRecord(
        "cinderbak.workflow",
        logging.INFO,
        __file__,
        1,
        "volume %s: %s",
        ("v1", "name\nERROR forged"),
        None,
    )
    assert logs.EscapeFilter().filter(record)
    assert record.getMessage() == "volume v1: name\\nERROR forged"
